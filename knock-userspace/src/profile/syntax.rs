//! The text forms of ports: ranges, port lists and static sequences.

use knock_common::maps::MAX_KNOCK_STEPS;

use crate::ports::{Proto, ProtoPort, parse_port};

/// Parses `LO-HI`.
pub fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("invalid port range '{text}' (expected LO-HI, e.g. 61000-65535)"))?;
    let (lo, hi) = (parse_port(lo)?, parse_port(hi)?);
    if lo > hi {
        return Err(format!("invalid port range '{text}': {lo} is above {hi}"));
    }
    Ok((lo, hi))
}

/// Parses a list of ports and ranges: `62000,63000-63010`.
pub fn parse_port_list(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains('-') {
            let (lo, hi) = parse_range(part)?;
            ports.extend(lo..=hi);
        } else {
            ports.push(parse_port(part)?);
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// Parses a static sequence in knockd's syntax: `7000,8000:udp,9000`.
pub fn parse_static(text: &str) -> Result<Vec<ProtoPort>, String> {
    let mut steps: Vec<ProtoPort> = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (port, proto) = match part.split_once(':') {
            None => (part, Proto::Tcp),
            Some((port, proto)) => {
                (port, proto.parse().map_err(|e: String| format!("{e} in '{part}'"))?)
            }
        };
        let step = ProtoPort { port: parse_port(port)?, proto };
        // A repeat would look like a retransmission and be ignored.
        if steps.last() == Some(&step) {
            return Err(format!("static sequence '{text}' repeats {step} twice in a row"));
        }
        steps.push(step);
    }
    if steps.is_empty() || steps.len() > MAX_KNOCK_STEPS as usize {
        return Err(format!(
            "a static sequence has 1 to {MAX_KNOCK_STEPS} ports, '{text}' has {}",
            steps.len()
        ));
    }
    Ok(steps)
}

/// Ports as `knock` and `knock-xdp sequence` print them: TCP bare, UDP as `PORT:udp`.
pub fn join_static(steps: &[ProtoPort]) -> String {
    steps.iter().map(knock_syntax).collect::<Vec<_>>().join(",")
}

pub fn knock_syntax(step: &ProtoPort) -> String {
    match step.proto {
        Proto::Tcp => step.port.to_string(),
        Proto::Udp => format!("{}:udp", step.port),
    }
}
