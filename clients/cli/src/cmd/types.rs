//! `taskwire tasks`: the registered task types.

use taskwire_client::Client;

use crate::Error;

/// Prints the registered task types with their input and output messages.
pub async fn list(client: &Client) -> Result<i32, Error> {
    let types = client.task_types().await?;
    if types.is_empty() {
        eprintln!("no task types registered yet: start a worker");
        return Ok(0);
    }
    let width = types.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    println!("{:width$}  {:30}  OUTPUT", "TASK", "INPUT");
    for t in types {
        println!("{:width$}  {:30}  {}", t.name, t.input_type, t.output_type);
    }
    Ok(0)
}
