// Copied from rumqttc 0.25.1, `examples/syncpubsub_v5.rs` (https://github.com/bytebeamio/rumqtt),
// by the rumqttc authors, under the Apache License, Version 2.0
// (https://www.apache.org/licenses/LICENSE-2.0), the licence of this crate too.
//
// Only the `use` lines changed, swapping rumqttc's blocking client for this crate's traced
// twin; was:
//     use rumqttc::v5::{Client, ConnectionError, MqttOptions};
// The rest is rumqttc's code as published (this repository's rustfmt may re-wrap a long
// line). It builds with `cargo build --examples` and `cargo test --all-targets`, so CI checks
// that the twins keep rumqttc's blocking API. Run, it needs a broker on localhost:1883
// (1884 for MQTT 5), so CI only compiles it; `tests/sync.rs` checks the behaviour against
// mosquitto.

use rumqttc::v5::mqttbytes::{QoS, v5::LastWill};
use rumqttc::v5::{ConnectionError, MqttOptions};
use rumqttc_opentelemetry::v5::TracedSyncClient as Client;
use std::thread;
use std::time::Duration;

fn main() {
    pretty_env_logger::init();

    let mut mqttoptions = MqttOptions::new("test-1", "localhost", 1884);
    let will = LastWill::new("hello/world", "good bye", QoS::AtMostOnce, false, None);
    mqttoptions
        .set_keep_alive(Duration::from_secs(5))
        .set_last_will(will);

    let (client, mut connection) = Client::new(mqttoptions, 10);
    thread::spawn(move || publish(client));

    for (i, notification) in connection.iter().enumerate() {
        match notification {
            Err(ConnectionError::Io(error))
                if error.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                println!(
                    "Failed to connect to the server. Make sure correct client is configured properly!\nError: {error:?}"
                );
                return;
            }
            _ => {}
        }
        println!("{i}. Notification = {notification:?}");
    }

    println!("Done with the stream!!");
}

fn publish(client: Client) {
    client.subscribe("hello/+/world", QoS::AtMostOnce).unwrap();
    for i in 0..10_usize {
        let payload = vec![1; i];
        let topic = format!("hello/{i}/world");
        let qos = QoS::AtLeastOnce;

        let _ = client.publish(topic, qos, true, payload);
    }

    thread::sleep(Duration::from_secs(1));
}
