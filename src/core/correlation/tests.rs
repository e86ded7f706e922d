//! Unit tests of the correlation table: each follows one of rumqttc's orders of events.

use super::*;

impl<T> Correlation<T> {
    fn apply_ack(
        &mut self,
        ack: fn(u16, Option<Failure>) -> Signal,
        pkid: u16,
        failure: Option<Failure>,
    ) -> Step<T> {
        self.apply(ack(pkid, failure))
    }

    /// What the traced event loop does with the events rumqttc still holds.
    fn lost(&mut self, stale: &[Signal]) -> Vec<(T, Result<(), Failure>)> {
        let mut done = Vec::new();
        for signal in stale.iter().skip(self.stale_applied()) {
            if let Step::Done(value, result) = self.apply_stale(*signal) {
                done.push((value, result));
            }
        }
        done
    }

    fn handed_out(&mut self, signal: Signal) -> Step<T> {
        if self.skip_stale() {
            Step::Pending
        } else {
            self.apply(signal)
        }
    }
}

fn done<T: std::fmt::Debug>(step: Step<T>) -> (T, Result<(), Failure>) {
    match step {
        Step::Done(value, result) => (value, result),
        other => panic!("expected Done, got {other:?}"),
    }
}

fn pending<T: std::fmt::Debug>(step: Step<T>) {
    assert!(
        matches!(step, Step::Pending),
        "expected Pending, got {step:?}"
    );
}

#[test]
fn qos0_ends_when_written() {
    let mut table = Correlation::default();
    table.enqueue("a");
    table.enqueue("b");
    assert_eq!(done(table.apply(Signal::Written(0))), ("a", Ok(())));
    assert_eq!(done(table.apply(Signal::Written(0))), ("b", Ok(())));
    assert_eq!(table.len(), 0);
}

#[test]
fn qos1_ends_at_its_puback_even_out_of_order() {
    let mut table = Correlation::default();
    for name in ["a", "b", "c"] {
        table.enqueue(name);
    }
    for pkid in 1..=3 {
        pending(table.apply(Signal::Written(pkid)));
    }
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 2, None)),
        ("b", Ok(()))
    );
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 3, None)),
        ("c", Ok(()))
    );
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 1, Some(Failure::Reason("not_authorized")))),
        ("a", Err(Failure::Reason("not_authorized")))
    );
    pending(table.apply_ack(Signal::PubAck, 1, None));
}

#[test]
fn qos2_waits_for_pubcomp_while_its_pkid_is_reused() {
    let mut table = Correlation::default();
    table.enqueue("old");
    table.enqueue("new");
    pending(table.apply(Signal::Written(1)));
    pending(table.apply_ack(Signal::PubRec, 1, None));
    // rumqttc freed pkid 1 at PUBREC: the next publish may take it.
    pending(table.apply(Signal::Written(1)));
    assert_eq!(
        done(table.apply_ack(Signal::PubComp, 1, None)),
        ("old", Ok(()))
    );
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 1, None)),
        ("new", Ok(()))
    );
}

#[test]
fn a_collision_is_parked_until_its_pkid_is_free() {
    let mut table = Correlation::default();
    for name in ["first", "second", "parked"] {
        table.enqueue(name);
    }
    pending(table.apply(Signal::Written(1)));
    pending(table.apply(Signal::Written(2)));
    // pkid 1 is still in flight: the third publish collides on it.
    pending(table.apply(Signal::Parked(1)));
    assert_eq!(table.places(), 3);
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 1, None)),
        ("first", Ok(()))
    );
    // rumqttc writes the parked publish with pkid 1.
    pending(table.apply(Signal::Written(1)));
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 2, None)),
        ("second", Ok(()))
    );
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 1, None)),
        ("parked", Ok(()))
    );
    assert_eq!(table.len(), 0);
}

#[test]
fn a_replay_keeps_waiting_for_the_same_ack() {
    let mut table = Correlation::default();
    table.enqueue("a");
    pending(table.apply(Signal::Written(5)));
    assert!(table.lost(&[]).is_empty());
    assert!(matches!(table.apply(Signal::Written(5)), Step::Replayed(5)));
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 5, None)),
        ("a", Ok(()))
    );
}

#[test]
fn session_loss_ends_exactly_what_rumqttc_dropped() {
    let mut table = Correlation::default();
    for name in ["acked-later", "unsent-1", "unsent-2", "after-reconnect"] {
        table.enqueue(name);
    }
    pending(table.apply(Signal::Written(1)));
    // Connection lost with "unsent-1" and "unsent-2" still in the channel; rumqttc moves them
    // to `pending`. "after-reconnect" is sent after the CONNACK, so it is not in `pending`.
    assert!(table.lost(&[]).is_empty());
    let lost = table.on_session_lost(2);
    assert_eq!(lost, ["acked-later", "unsent-1", "unsent-2"]);
    pending(table.apply(Signal::Written(1)));
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 1, None)),
        ("after-reconnect", Ok(()))
    );
}

#[test]
fn stale_events_are_correlated_once() {
    let mut table = Correlation::default();
    for name in ["written", "qos0", "queued"] {
        table.enqueue(name);
    }
    // Both events were queued inside rumqttc when the write failed.
    let finished = table.lost(&[Signal::Written(7), Signal::Written(0)]);
    assert_eq!(finished, [("qos0", Ok(()))]);
    // A second failure before they were handed out must not correlate them again.
    assert!(
        table
            .lost(&[Signal::Written(7), Signal::Written(0)])
            .is_empty()
    );
    // Handed out later: skipped.
    pending(table.handed_out(Signal::Written(7)));
    pending(table.handed_out(Signal::Written(0)));
    assert_eq!(table.on_session_lost(1), ["written", "queued"]);
}

#[test]
fn an_ack_read_before_the_connection_broke_still_counts() {
    let mut table = Correlation::default();
    table.enqueue("acked");
    table.enqueue("unacked");
    pending(table.handed_out(Signal::Written(1)));
    pending(table.handed_out(Signal::Written(2)));
    // rumqttc read PUBACK 1 and then the end of the stream: the event is still queued.
    assert_eq!(table.lost(&[Signal::PubAck(1, None)]), [("acked", Ok(()))]);
    // The session is gone: only the unacknowledged publish is lost.
    assert_eq!(table.on_session_lost(0), ["unacked"]);
    // The stale PUBACK handed out later is skipped.
    pending(table.handed_out(Signal::PubAck(1, None)));
    assert_eq!(table.len(), 0);
}

#[test]
fn expiry_ends_only_old_unacknowledged_entries() {
    let mut table = Correlation::default();
    table.enqueue("old");
    pending(table.apply(Signal::Written(1)));
    let later = Instant::now() + Duration::from_secs(120);
    table.enqueue("young");
    pending(table.apply(Signal::Written(2)));
    assert!(
        table
            .expire(Instant::now(), Duration::from_secs(60))
            .is_empty()
    );
    assert_eq!(
        table.expire(later, Duration::from_secs(60)),
        ["old", "young"]
    );
    assert_eq!(table.len(), 0);
    // Ghosts keep their places until rumqttc is done with the packets.
    assert_eq!(table.places(), 2);
    // The late acknowledgement frees the ghost's place, and is reported (for a log line).
    assert!(matches!(
        table.apply_ack(Signal::PubAck, 1, None),
        Step::Late(1)
    ));
    assert_eq!(table.places(), 1);
}

#[test]
fn a_replay_after_expiry_does_not_shift_the_queue() {
    let mut table = Correlation::default();
    table.enqueue("expired");
    pending(table.apply(Signal::Written(3)));
    let later = Instant::now() + Duration::from_secs(120);
    assert_eq!(table.expire(later, Duration::from_secs(60)), ["expired"]);
    table.enqueue("next");
    // rumqttc replays pkid 3 after a reconnect: the ghost takes it, "next" stays queued.
    assert!(matches!(table.apply(Signal::Written(3)), Step::Replayed(3)));
    assert!(matches!(
        table.apply_ack(Signal::PubAck, 3, None),
        Step::Late(3)
    ));
    assert_eq!(done(table.apply(Signal::Written(0))), ("next", Ok(())));
}

#[test]
fn requeue_restores_the_order_of_the_new_pending() {
    let mut table = Correlation::default();
    for name in ["a", "b", "parked", "c", "later"] {
        table.enqueue(name);
    }
    pending(table.apply(Signal::Written(1))); // a
    pending(table.apply(Signal::Written(2))); // b
    pending(table.apply(Signal::Parked(1))); // parked on pkid 1
    assert!(table.lost(&[]).is_empty());
    // rumqttc's pending was [a(1), b(2), c(0)]; "later" is still in the channel. The
    // traced event loop puts back [a, b, parked, c], pkids cleared.
    let lost = table.requeue(
        &[
            Resent::Inflight(1),
            Resent::Inflight(2),
            Resent::Collision,
            Resent::Unsent,
        ],
        |_| {},
    );
    assert!(lost.is_empty());
    for (pkid, name) in [(1, "a"), (2, "b"), (3, "parked"), (4, "c"), (5, "later")] {
        pending(table.apply(Signal::Written(pkid)));
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, pkid, None)),
            (name, Ok(()))
        );
    }
}

#[test]
fn requeue_loses_qos2_publishes_past_pubrec() {
    let mut table = Correlation::default();
    table.enqueue("released");
    table.enqueue("written");
    pending(table.apply(Signal::Written(1)));
    pending(table.apply_ack(Signal::PubRec, 1, None));
    pending(table.apply(Signal::Written(2)));
    let lost = table.requeue(&[Resent::Inflight(2)], |_| {});
    assert_eq!(lost, ["released"]);
    pending(table.apply(Signal::Written(7)));
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 7, None)),
        ("written", Ok(()))
    );
}

#[test]
fn requeue_keeps_a_place_for_a_publish_it_has_no_entry_for() {
    let mut table: Correlation<&str> = Correlation::default();
    table.enqueue("mine");
    // pkid 9 was never seen (its entry expired and was acknowledged meanwhile, say).
    let lost = table.requeue(&[Resent::Inflight(9), Resent::Unsent], |_| {});
    assert!(lost.is_empty());
    pending(table.apply(Signal::Written(0))); // the ghost
    assert_eq!(done(table.apply(Signal::Written(0))), ("mine", Ok(())));
}

#[test]
fn drain_takes_everything() {
    let mut table = Correlation::default();
    for name in ["a", "b", "c"] {
        table.enqueue(name);
    }
    pending(table.apply(Signal::Written(1)));
    pending(table.apply(Signal::Parked(1)));
    assert_eq!(table.drain(), ["a", "b", "c"]);
    assert_eq!(table.len(), 0);
}

/// A publish parked on pkid 1, then a reconnect: rumqttc replays the unacknowledged pkid 1 first
/// (a replay, not the release of the parked publish), and frees the parked one only after the
/// PUBACK of pkid 1, which it hands out before the parked publish's `Outgoing::Publish(1)`.
#[test]
fn a_replay_of_a_pkid_with_a_publish_parked_on_it_is_a_replay() {
    let mut table = Correlation::default();
    table.enqueue("first");
    table.enqueue("parked");
    pending(table.apply(Signal::Written(1)));
    pending(table.apply(Signal::Parked(1)));
    assert!(matches!(table.apply(Signal::Written(1)), Step::Replayed(1)));
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 1, None)),
        ("first", Ok(()))
    );
    pending(table.apply(Signal::Written(1)));
    assert_eq!(
        done(table.apply_ack(Signal::PubAck, 1, None)),
        ("parked", Ok(()))
    );
    assert_eq!(table.len(), 0);
}
