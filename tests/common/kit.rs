//! The per-version pieces of scenarios written once for MQTT 3.1.1 and MQTT 5 with the roles
//! (`TracedPublisher`, `TracedSubscriber`): `use common::kit::v4 as kit;` (or `v5`) in a module,
//! then a macro with the shared tests.

pub mod v4 {
    pub use rumqttc::{MqttOptions, QoS};
    pub use rumqttc_opentelemetry::v4::{
        AckPolicy, HandlerResult, Message, SubscriberBuilder, TracedPublisher, TracedSubscriber,
    };
    use rumqttc_opentelemetry::{Instrumentation, V4Propagation};

    use crate::common::telemetry::Telemetry;

    pub const VERSION: u8 = 4;
    /// A broker bridge protocol of this version (mosquitto.conf `bridge_protocol_version`).
    pub const BRIDGE_PROTOCOL: &str = "mqttv311";

    pub fn options(id: &str, port: u16) -> MqttOptions {
        MqttOptions::new(id, "127.0.0.1", port)
    }

    /// Clean Session = 0 (MQTT 3.1.1 section 3.1.2.4).
    pub fn persistent(options: &mut MqttOptions) {
        options.set_clean_session(false);
    }

    /// MQTT 3.1.1 has no properties: the trace context travels in the payload envelope.
    pub fn instrumentation(telemetry: &Telemetry) -> Instrumentation {
        telemetry
            .builder()
            .v4_propagation(V4Propagation::Envelope)
            .build()
    }
}

pub mod v5 {
    pub use rumqttc::v5::MqttOptions;
    pub use rumqttc::v5::mqttbytes::QoS;
    use rumqttc_opentelemetry::Instrumentation;
    pub use rumqttc_opentelemetry::v5::{
        AckPolicy, HandlerResult, Message, SubscriberBuilder, TracedPublisher, TracedSubscriber,
    };

    use crate::common::telemetry::Telemetry;

    pub const VERSION: u8 = 5;
    /// A broker bridge protocol of this version (mosquitto.conf `bridge_protocol_version`).
    pub const BRIDGE_PROTOCOL: &str = "mqttv50";

    pub fn options(id: &str, port: u16) -> MqttOptions {
        MqttOptions::new(id, "127.0.0.1", port)
    }

    /// Clean Start = 0 with a one-hour Session Expiry Interval (MQTT 5 sections 3.1.2.4,
    /// 3.1.2.11.2).
    pub fn persistent(options: &mut MqttOptions) {
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(3600));
    }

    pub fn instrumentation(telemetry: &Telemetry) -> Instrumentation {
        telemetry.instrumentation()
    }
}
