//! A minimal graphql-transport-ws client for the subscription tests.
#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects, sends `connection_init` with `init_payload`, returns the socket
/// and the server's first reply (`connection_ack` or an error/close).
pub async fn connect(url: &str, init_payload: Value) -> (Socket, Value) {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(Message::text(
            json!({"type": "connection_init", "payload": init_payload}).to_string(),
        ))
        .await
        .unwrap();
    let reply = next_json(&mut socket).await;
    (socket, reply)
}

/// Starts subscription `id`.
pub async fn subscribe(socket: &mut Socket, id: &str, query: &str) {
    socket
        .send(Message::text(
            json!({"id": id, "type": "subscribe", "payload": {"query": query}}).to_string(),
        ))
        .await
        .unwrap();
}

/// Two sockets authenticated with `bearer`: one subscribed to
/// `stageChanged`, one to `alertRaised` (each message's `payload.data`
/// holds one change or alert).
pub async fn stage_and_alert_feeds(url: &str, bearer: &str) -> (Socket, Socket) {
    let init = json!({"headers": {"Authorization": format!("Bearer {bearer}")}});
    let (mut stages, _) = connect(url, init.clone()).await;
    subscribe(
        &mut stages,
        "s",
        "subscription { stageChanged { customerId from to at } }",
    )
    .await;
    let (mut alerts, _) = connect(url, init).await;
    subscribe(
        &mut alerts,
        "a",
        "subscription { alertRaised { customerId kind raisedAt } }",
    )
    .await;
    (stages, alerts)
}

/// The next JSON message (skipping pings); a close frame becomes
/// `{"type": "closed", "reason": ...}`.
pub async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), socket.next())
            .await
            .expect("a websocket message within 30 s");
        match message {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == "ping" {
                    socket
                        .send(Message::text(json!({"type": "pong"}).to_string()))
                        .await
                        .unwrap();
                    continue;
                }
                return value;
            }
            Some(Ok(Message::Close(frame))) => {
                return json!({
                    "type": "closed",
                    "code": frame.as_ref().map(|f| u16::from(f.code)),
                    "reason": frame.map(|f| f.reason.to_string()),
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return json!({"type": "closed", "reason": e.to_string()}),
            None => return json!({"type": "closed", "reason": null}),
        }
    }
}
