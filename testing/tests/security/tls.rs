//! TLS and mutual TLS on the gateway's gRPC port.

use super::*;

#[tokio::test]
async fn tls_and_mutual_tls_on_the_gateway() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let ca = Ca::new("taskwire test CA")?;
    let (server_cert, server_key) = ca.issue(&["localhost", "127.0.0.1"])?;
    let (client_cert, client_key) = ca.issue(&["producer"])?;
    let stranger = Ca::new("another CA")?;
    let (stranger_cert, stranger_key) = stranger.issue(&["producer"])?;
    let trusting = || taskwire_client::ConnectOptions::default().ca_pem(ca.pem.clone());

    // TLS: a client that trusts the CA gets through; plaintext does not.
    let mut config = examples_config(&nats.url());
    config.tls = Some(taskwire_gateway::Tls {
        cert_pem: server_cert.clone().into_bytes(),
        key_pem: server_key.clone().into_bytes(),
        client_ca_pem: None,
    });
    let gateway = Gateway::start_with(config).await?;
    let https = gateway.url().replace("http://", "https://");
    let client = Client::connect_with(&https, trusting()).await?;
    assert_eq!(add_with(&client).await?, 9);
    let plain = match Client::connect(gateway.url()).await {
        Ok(client) => add_with(&client).await.err(),
        Err(e) => Some(e),
    };
    assert!(plain.is_some(), "a plaintext client got through a TLS port");
    let untrusting = Client::connect_with(
        &https,
        taskwire_client::ConnectOptions::default().ca_pem(stranger.pem.clone()),
    )
    .await;
    assert!(
        match untrusting {
            Ok(client) => add_with(&client).await.is_err(),
            Err(_) => true,
        },
        "a client trusting another CA accepted the gateway"
    );
    drop(gateway);

    // Mutual TLS: only a client certificate the client CA signed gets through.
    let mut config = examples_config(&nats.url());
    config.tls = Some(taskwire_gateway::Tls {
        cert_pem: server_cert.into_bytes(),
        key_pem: server_key.into_bytes(),
        client_ca_pem: Some(ca.pem.clone().into_bytes()),
    });
    let gateway = Gateway::start_with(config).await?;
    let https = gateway.url().replace("http://", "https://");
    let with_cert = Client::connect_with(
        &https,
        trusting().client_certificate(client_cert, client_key),
    )
    .await?;
    assert_eq!(add_with(&with_cert).await?, 9);
    for (what, options) in [
        ("no client certificate", trusting()),
        (
            "a certificate of another CA",
            trusting().client_certificate(stranger_cert, stranger_key),
        ),
    ] {
        let refused = match Client::connect_with(&https, options).await {
            Ok(client) => add_with(&client).await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "{what} got through mutual TLS");
    }
    Ok(())
}
