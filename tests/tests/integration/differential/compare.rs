//! Every map entry of the kernel against the model's, after a stream.

use super::*;

/// Every entry of every map the two sides write must agree.
pub(super) fn compare_maps(kernel: &Kernel, model: &Model, context: &str) {
    let close = |a: u64, b: u64| a.abs_diff(b) <= TOLERANCE_NS;

    let kernel_allowed: BTreeMap<SourceKey, AllowEntry> =
        kernel.maps.allowed().unwrap().into_iter().collect();
    let model_allowed: BTreeMap<SourceKey, AllowEntry> =
        model.allow.borrow().iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        kernel_allowed.keys().collect::<Vec<_>>(),
        model_allowed.keys().collect::<Vec<_>>(),
        "allowed sources{context}"
    );
    for (key, k) in &kernel_allowed {
        let m = model_allowed[key];
        assert!(
            close(k.deadline_ns, m.deadline_ns) && (k.origin, k.client) == (m.origin, m.client),
            "allow entry of {key:?}: kernel {k:?}, model {m:?}{context}"
        );
    }

    let kernel_flows: BTreeMap<_, _> = kernel.maps.flows().unwrap().into_iter().collect();
    let model_flows: BTreeMap<_, _> = model.flows.borrow().iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        kernel_flows.keys().collect::<Vec<_>>(),
        model_flows.keys().collect::<Vec<_>>(),
        "flows{context}"
    );
    for (key, k) in &kernel_flows {
        let m = model_flows[key];
        assert!(
            close(k.last_seen_ns, m.last_seen_ns)
                && (k.closing_until_ns == 0) == (m.closing_until_ns == 0)
                && close(k.closing_until_ns, m.closing_until_ns)
                && (k.client, k.next_seq, k.last_ack, k.tracking)
                    == (m.client, m.next_seq, m.last_ack, m.tracking),
            "flow {key:?}: kernel {k:?}, model {m:?}{context}"
        );
    }

    let kernel_states: BTreeMap<_, _> = kernel.maps.knock_states().unwrap().into_iter().collect();
    let model_states: BTreeMap<_, _> =
        model.states.borrow().iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        kernel_states.keys().collect::<Vec<_>>(),
        model_states.keys().collect::<Vec<_>>(),
        "knock states{context}"
    );
    for (key, k) in &kernel_states {
        let m = model_states[key];
        assert!(
            close(k.started_ns, m.started_ns)
                && (k.node, k.step, k.last_port, k.last_proto, k.via)
                    == (m.node, m.step, m.last_port, m.last_proto, m.via),
            "knock state of {key:?}: kernel {k:?}, model {m:?}{context}"
        );
    }

    let kernel_used: BTreeSet<_> =
        kernel.maps.used().unwrap().into_iter().map(|(k, _)| k).collect();
    let model_used: BTreeSet<_> = model.used.borrow().keys().copied().collect();
    assert_eq!(kernel_used, model_used, "used sequences{context}");

    let kernel_misses: BTreeMap<_, _> = kernel.maps.misses().unwrap().into_iter().collect();
    let model_misses: BTreeMap<_, _> =
        model.misses.borrow().iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        kernel_misses.keys().collect::<Vec<_>>(),
        model_misses.keys().collect::<Vec<_>>(),
        "miss records{context}"
    );
    for (key, k) in &kernel_misses {
        assert!(
            close(*k, model_misses[key]),
            "misses of {key:?}: kernel {k}, model {}{context}",
            model_misses[key]
        );
    }

    let kernel_nonces: BTreeSet<_> =
        kernel.maps.spa_nonces().unwrap().into_iter().map(|(k, _)| k).collect();
    let model_nonces: BTreeSet<_> = model.nonces.borrow().keys().copied().collect();
    assert_eq!(kernel_nonces, model_nonces, "SPA nonces{context}");

    // And the security property itself: a source is only ever allowed after
    // completing a sequence that opened the door for it, or by hand.
    let opened: BTreeSet<SourceKey> = model
        .events
        .borrow()
        .iter()
        .filter(|e| e.kind == EventKind::Opened as u32)
        .map(|e| e.source)
        .collect();
    for (key, entry) in &model_allowed {
        assert!(
            opened.contains(key) || entry.origin != AllowOrigin::Knock as u32,
            "{key:?}{context}"
        );
    }
}

/// Has client `client` (index into the case's sequences) opened the door?
pub(super) fn opened_for(model: &Model, client: usize) -> bool {
    model
        .events
        .borrow()
        .iter()
        .any(|e| e.kind == EventKind::Opened as u32 && e.client == client as u32 + 1)
}

/// Did a source send `sequence`'s ports, over TCP, in order (not
/// necessarily back to back)? Opening the door needs at least that.
pub(super) fn sent_in_order(sent: &[ProtoPort], sequence: &[u16]) -> bool {
    let mut wanted = sequence.iter().peekable();
    for knock in sent {
        if knock.proto == Proto::Tcp && wanted.peek() == Some(&&knock.port) {
            wanted.next();
        }
    }
    wanted.peek().is_none()
}
