//! Schedules: tasks submitted on a cron expression or an interval.

use taskwire::v1;

use crate::{Client, Error};

impl Client {
    /// Creates a schedule: `schedule.task` submitted with `schedule.args` on every tick of its
    /// cron expression or interval, by the broker.
    pub async fn create_schedule(&self, schedule: v1::Schedule) -> Result<v1::Schedule, Error> {
        let request = v1::CreateScheduleRequest {
            schedule: Some(schedule),
        };
        Ok(self.schedules.clone().create(request).await?.into_inner())
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<v1::Schedule>, Error> {
        Ok(self
            .schedules
            .clone()
            .list(v1::ListSchedulesRequest {})
            .await?
            .into_inner()
            .schedules)
    }

    /// One schedule.
    pub async fn schedule(&self, name: &str) -> Result<v1::Schedule, Error> {
        let request = v1::GetScheduleRequest {
            name: name.to_owned(),
        };
        Ok(self.schedules.clone().get(request).await?.into_inner())
    }

    /// Stops a schedule until [`Client::resume_schedule`].
    pub async fn pause_schedule(&self, name: &str) -> Result<v1::Schedule, Error> {
        let request = v1::PauseScheduleRequest {
            name: name.to_owned(),
        };
        Ok(self.schedules.clone().pause(request).await?.into_inner())
    }

    /// Starts a paused schedule again.
    pub async fn resume_schedule(&self, name: &str) -> Result<v1::Schedule, Error> {
        let request = v1::ResumeScheduleRequest {
            name: name.to_owned(),
        };
        Ok(self.schedules.clone().resume(request).await?.into_inner())
    }

    /// Deletes a schedule.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), Error> {
        let request = v1::DeleteScheduleRequest {
            name: name.to_owned(),
        };
        self.schedules.clone().delete(request).await?;
        Ok(())
    }
}
