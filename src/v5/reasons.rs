//! The names of MQTT 5 reason codes (PUBACK, PUBREC, PUBCOMP, SUBACK, CONNACK) and connection
//! errors, as the `error.type` values the spans and metrics record.

use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, PubAckReason, PubCompReason, PubRecReason, SubscribeReasonCode,
};
use rumqttc::v5::{ConnectionError, StateError};

use crate::core::{Failure, feature_error_type, io_error_type};

/// PUBREC reasons are PUBACK's (MQTT 5 sections 3.4.2.1 and 3.5.2.1 list the same codes).
pub(super) fn pubrec_as_puback(reason: PubRecReason) -> PubAckReason {
    match reason {
        PubRecReason::Success => PubAckReason::Success,
        PubRecReason::NoMatchingSubscribers => PubAckReason::NoMatchingSubscribers,
        PubRecReason::UnspecifiedError => PubAckReason::UnspecifiedError,
        PubRecReason::ImplementationSpecificError => PubAckReason::ImplementationSpecificError,
        PubRecReason::NotAuthorized => PubAckReason::NotAuthorized,
        PubRecReason::TopicNameInvalid => PubAckReason::TopicNameInvalid,
        PubRecReason::PacketIdentifierInUse => PubAckReason::PacketIdentifierInUse,
        PubRecReason::QuotaExceeded => PubAckReason::QuotaExceeded,
        PubRecReason::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
    }
}

/// The `error.type` of a PUBACK (or PUBREC) reason, `None` for the two success codes (0x10
/// "no matching subscribers" is one).
pub(super) fn ack_failure(reason: PubAckReason) -> Option<Failure> {
    let name = match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => return None,
        PubAckReason::UnspecifiedError => "unspecified_error",
        PubAckReason::ImplementationSpecificError => "implementation_specific_error",
        PubAckReason::NotAuthorized => "not_authorized",
        PubAckReason::TopicNameInvalid => "topic_name_invalid",
        PubAckReason::PacketIdentifierInUse => "packet_identifier_in_use",
        PubAckReason::QuotaExceeded => "quota_exceeded",
        PubAckReason::PayloadFormatInvalid => "payload_format_invalid",
    };
    Some(Failure::Reason(name))
}

/// The `error.type` of a PUBCOMP reason.
pub(super) fn pubcomp_failure(reason: PubCompReason) -> Option<Failure> {
    match reason {
        PubCompReason::Success => None,
        PubCompReason::PacketIdentifierNotFound => {
            Some(Failure::Reason("packet_identifier_not_found"))
        }
    }
}

/// The `error.type`-style name of a refused MQTT 5 subscription, `None` when granted.
pub(super) fn suback_failure(code: &SubscribeReasonCode) -> Option<&'static str> {
    Some(match code {
        SubscribeReasonCode::Success(_) => return None,
        SubscribeReasonCode::Failure => "failure",
        SubscribeReasonCode::Unspecified => "unspecified_error",
        SubscribeReasonCode::ImplementationSpecific => "implementation_specific_error",
        SubscribeReasonCode::NotAuthorized => "not_authorized",
        SubscribeReasonCode::TopicFilterInvalid => "topic_filter_invalid",
        SubscribeReasonCode::PkidInUse => "packet_identifier_in_use",
        SubscribeReasonCode::QuotaExceeded => "quota_exceeded",
        SubscribeReasonCode::SharedSubscriptionsNotSupported => {
            "shared_subscriptions_not_supported"
        }
        SubscribeReasonCode::SubscriptionIdNotSupported => "subscription_identifiers_not_supported",
        SubscribeReasonCode::WildcardSubscriptionsNotSupported => {
            "wildcard_subscriptions_not_supported"
        }
    })
}

/// The `error.type` of an MQTT 5 CONNACK reason code.
pub(super) fn connack_error_type(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "connection_refused",
        ConnectReturnCode::RefusedProtocolVersion => "unsupported_protocol_version",
        ConnectReturnCode::BadClientId => "client_identifier_not_valid",
        ConnectReturnCode::ServiceUnavailable => "server_unavailable",
        ConnectReturnCode::UnspecifiedError => "unspecified_error",
        ConnectReturnCode::MalformedPacket => "malformed_packet",
        ConnectReturnCode::ProtocolError => "protocol_error",
        ConnectReturnCode::ImplementationSpecificError => "implementation_specific_error",
        ConnectReturnCode::UnsupportedProtocolVersion => "unsupported_protocol_version",
        ConnectReturnCode::ClientIdentifierNotValid => "client_identifier_not_valid",
        ConnectReturnCode::BadUserNamePassword => "bad_user_name_or_password",
        ConnectReturnCode::NotAuthorized => "not_authorized",
        ConnectReturnCode::ServerUnavailable => "server_unavailable",
        ConnectReturnCode::ServerBusy => "server_busy",
        ConnectReturnCode::Banned => "banned",
        ConnectReturnCode::BadAuthenticationMethod => "bad_authentication_method",
        ConnectReturnCode::TopicNameInvalid => "topic_name_invalid",
        ConnectReturnCode::PacketTooLarge => "packet_too_large",
        ConnectReturnCode::QuotaExceeded => "quota_exceeded",
        ConnectReturnCode::PayloadFormatInvalid => "payload_format_invalid",
        ConnectReturnCode::RetainNotSupported => "retain_not_supported",
        ConnectReturnCode::QoSNotSupported => "qos_not_supported",
        ConnectReturnCode::UseAnotherServer => "use_another_server",
        ConnectReturnCode::ServerMoved => "server_moved",
        ConnectReturnCode::ConnectionRateExceeded => "connection_rate_exceeded",
    }
}

/// The `error.type` of a connection error (recorded on connection attempts and lifetimes).
// The catch-all covers variants that exist only with rumqttc's TLS, WebSocket or proxy features.
#[allow(unreachable_patterns)]
pub(super) fn error_type(error: &ConnectionError) -> &'static str {
    match error {
        ConnectionError::MqttState(state) => match state {
            StateError::Io(io) => io_error_type(io),
            StateError::AwaitPingResp => "keepalive_timeout",
            StateError::ConnectionAborted => "connection_closed",
            StateError::CollisionTimeout => "collision_timeout",
            // rumqttc reports a connection reset while it reads a packet as a read error.
            StateError::Deserialization(rumqttc::v5::mqttbytes::Error::Io(io)) => io_error_type(io),
            StateError::Deserialization(_) => "malformed_packet",
            StateError::ServerDisconnect { .. } => "server_disconnect",
            StateError::ConnFail { reason } => connack_error_type(*reason),
            StateError::OutgoingPacketTooLarge { .. }
            | StateError::IncomingPacketTooLarge { .. } => "packet_too_large",
            _ => "protocol_error",
        },
        ConnectionError::Timeout(_) => "timeout",
        ConnectionError::Io(io) => io_error_type(io),
        ConnectionError::ConnectionRefused(code) => connack_error_type(*code),
        ConnectionError::NotConnAck(_) => "protocol_error",
        ConnectionError::RequestsDone => "requests_done",
        other => feature_error_type(&other.to_string()),
    }
}
