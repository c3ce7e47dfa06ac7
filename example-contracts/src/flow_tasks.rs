//! The example implementation of `examples.flow.v1.Flow`, the tasks the workflow examples use:
//! the example worker serves it beside `Magic`.

use std::time::Duration;

use taskwire::{TaskContext, TaskError};

use crate::flow::v1::{
    Flow, Numbers, Parts, Reported, ScaleArgs, SlowArgs, SplitArgs, Total, Totals,
};

/// Sums, scales, doubles, collects, waits, splits and reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlowTasks;

impl Flow for FlowTasks {
    async fn sum(&self, _ctx: TaskContext, args: Numbers) -> Result<Total, TaskError> {
        Ok(Total {
            total: args.values.iter().sum(),
            count: args.values.len() as i64,
            limit: 0,
        })
    }

    async fn scale(&self, _ctx: TaskContext, args: ScaleArgs) -> Result<Total, TaskError> {
        Ok(Total {
            total: args.value * args.factor,
            count: 1,
            limit: 0,
        })
    }

    async fn double(&self, _ctx: TaskContext, args: Total) -> Result<Total, TaskError> {
        if args.limit > 0 && args.total > args.limit {
            return Err(TaskError::permanent(format!(
                "{} is above the limit of {}",
                args.total, args.limit
            )));
        }
        Ok(Total {
            total: args.total * 2,
            ..args
        })
    }

    async fn collect(&self, _ctx: TaskContext, args: Totals) -> Result<Total, TaskError> {
        Ok(Total {
            total: args.totals.iter().map(|t| t.total).sum(),
            count: args.totals.len() as i64,
            limit: 0,
        })
    }

    async fn slow(&self, ctx: TaskContext, args: SlowArgs) -> Result<Total, TaskError> {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.millis.max(0) as u64)) => Ok(Total {
                total: args.total,
                count: 1,
                limit: 0,
            }),
            () = ctx.cancelled() => Err(TaskError::permanent("stopped on cancel")),
        }
    }

    async fn split(&self, _ctx: TaskContext, args: SplitArgs) -> Result<Parts, TaskError> {
        Ok(Parts {
            parts: (0..args.count.max(0))
                .map(|i| Total {
                    total: i,
                    count: 1,
                    limit: args.limit,
                })
                .collect(),
        })
    }

    async fn report(
        &self,
        _ctx: TaskContext,
        args: taskwire::v1::WorkflowFailure,
    ) -> Result<Reported, TaskError> {
        let line = format!(
            "workflow {} failed at step {}: {}",
            args.workflow_id,
            args.step,
            args.error.map(|e| e.message).unwrap_or_default()
        );
        Ok(Reported { line })
    }
}
