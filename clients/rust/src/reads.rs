//! A task after its submit: its state, waits, live changes, cancel.

use std::time::Duration;

use taskwire::v1;

use crate::{Client, Error, TaskInfo, Watch};

impl Client {
    /// The current state of a task (and its result as JSON when `json`).
    pub async fn get(&self, id: &str, json: bool) -> Result<TaskInfo, Error> {
        let request = v1::GetRequest {
            task_id: id.to_owned(),
            include_json: json,
        };
        Ok(self.tasks.clone().get(request).await?.into_inner())
    }

    /// Waits on the gateway until the task has a result, at most `timeout`.
    pub async fn wait(&self, id: &str, timeout: Duration, json: bool) -> Result<TaskInfo, Error> {
        let request = v1::WaitRequest {
            task_id: id.to_owned(),
            timeout: prost_types::Duration::try_from(timeout).ok(),
            include_json: json,
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout + Duration::from_secs(5));
        Ok(self.tasks.clone().wait(request).await?.into_inner())
    }

    /// Follows a task: its current state first, then every change until its final state.
    pub async fn watch(&self, id: &str, json: bool) -> Result<Watch, Error> {
        let request = v1::WatchRequest {
            task_id: id.to_owned(),
            include_json: json,
        };
        Ok(Watch {
            stream: self.tasks.clone().watch(request).await?.into_inner(),
        })
    }

    /// Cancels a task that has not finished.
    pub async fn cancel(&self, id: &str) -> Result<TaskInfo, Error> {
        let request = v1::CancelRequest {
            task_id: id.to_owned(),
        };
        Ok(self.tasks.clone().cancel(request).await?.into_inner())
    }

    /// One page of the tasks that match `filter`: pass the answer's `next_page_token` back as
    /// `page_token` for the next one (empty: the list has ended).
    pub async fn list_tasks(
        &self,
        filter: v1::TaskFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<v1::ListTasksResponse, Error> {
        let request = v1::ListTasksRequest {
            filter: Some(filter),
            page_size,
            page_token: page_token.to_owned(),
            include_json: false,
        };
        Ok(self.tasks.clone().list(request).await?.into_inner())
    }

    /// Every task that matches `filter`, page after page, up to `limit` of them.
    pub async fn find_tasks(
        &self,
        filter: v1::TaskFilter,
        limit: usize,
    ) -> Result<Vec<TaskInfo>, Error> {
        let mut found = Vec::new();
        let mut token = String::new();
        loop {
            let want = (limit - found.len()).min(1000) as u32;
            let page = self.list_tasks(filter.clone(), want, &token).await?;
            found.extend(page.tasks);
            if found.len() >= limit || page.next_page_token.is_empty() {
                found.truncate(limit);
                return Ok(found);
            }
            token = page.next_page_token;
        }
    }

    /// Cancels every task that matches `filter` and has not finished; how many it cancelled.
    pub async fn cancel_many(&self, filter: v1::TaskFilter) -> Result<u64, Error> {
        let request = v1::CancelManyRequest {
            filter: Some(filter),
        };
        Ok(self
            .tasks
            .clone()
            .cancel_many(request)
            .await?
            .into_inner()
            .cancelled)
    }
}
