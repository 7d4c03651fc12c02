//! Answering control requests (see `crate::control` for the protocol).

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Result, anyhow, bail};
use knock_common::{allow::AllowOrigin, source::SourceKey};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};
use tracing::{info, warn};

use super::Daemon;
use crate::{
    audit, clock,
    control::{AllowedSource, Changed, Flow, InterfaceStatus, Listing, Reply, Request, Status},
    duration::format_duration,
    nets::Cidr,
    ports::{self, ProtoPort},
    state::State,
};

/// A client that does not send its request within this time is dropped, so
/// one stuck client cannot stall the daemon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

impl Daemon {
    pub(super) async fn answer(&mut self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
        let mut line = String::new();
        let reply = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => return warn!("control client sent nothing in time"),
            Ok(Err(err)) => return warn!("control client: {err}"),
            Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Ok(request) => match self.handle(request) {
                    Ok(value) => Reply::Ok(value),
                    Err(err) => Reply::Error(format!("{err:#}")),
                },
                Err(err) => Reply::Error(format!("invalid request: {err}")),
            },
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|err| {
            serde_json::to_string(&Reply::Error(format!("cannot encode the answer: {err}")))
                .expect("a string always encodes")
        });
        text.push('\n');
        if let Err(err) = write.write_all(text.as_bytes()).await {
            warn!("control client: {err}");
        }
    }

    fn handle(&mut self, request: Request) -> Result<serde_json::Value> {
        match request {
            Request::Protect { ports } => self.change_protected(ports, true),
            Request::Unprotect { ports } => self.change_protected(ports, false),
            Request::Allow { addr, for_ms } => {
                let duration = Duration::from_millis(for_ms);
                self.maps.allow(addr, clock::deadline_after(duration))?;
                info!(source = %addr, window = %format_duration(duration), "allowed by hand");
                changed(format!("allowed {addr} for {}", format_duration(duration)))
            }
            Request::AllowNet { net } => {
                if self.allowed_nets().contains(&net) {
                    return changed(format!("{net} is always allowed already"));
                }
                let mut next = self.state.clone();
                next.allow_nets.insert(net);
                self.apply_nets(next)?;
                info!(network = %net, "always allowed");
                changed(format!("{net} is always allowed (persisted)"))
            }
            Request::Revoke { target } => self.revoke(target),
            Request::List => to_value(self.listing()?),
            Request::Status => to_value(self.status()?),
            Request::Detach { iface: Some(iface) } => {
                self.program.detach(&iface)?;
                // Not to be attached again if the interface comes and goes.
                self.options.ifaces.retain(|i| *i != iface);
                info!(interface = %iface, "detached");
                self.stop = self.program.attachments.is_empty();
                to_value(Changed { message: format!("detached from {iface}"), stopping: self.stop })
            }
            Request::ReloadClients => changed(self.reload_clients()?.join("; ")),
            Request::Reload => changed(self.reload()?),
            Request::Detach { iface: None } => {
                self.stop = true;
                let ifaces: Vec<_> =
                    self.program.attachments.iter().map(|a| a.iface.as_str()).collect();
                to_value(Changed {
                    message: format!("detached from {}", ifaces.join(" ")),
                    stopping: true,
                })
            }
        }
    }

    /// Applies a protect/unprotect to the kernel, then persists it. If the
    /// state cannot be saved, the kernel is put back, so what runs always
    /// matches what the next start will load.
    fn change_protected(
        &mut self,
        ports: Vec<ProtoPort>,
        protect: bool,
    ) -> Result<serde_json::Value> {
        let requested: BTreeSet<ProtoPort> = ports.into_iter().collect();
        if !protect && let Some(port) = requested.iter().find(|p| self.config.protected.contains(p))
        {
            bail!(
                "{port} is protected by {}; remove it there (and reload)",
                self.config.describe()
            );
        }
        let in_force = self.protected();
        let mut next = self.state.clone();
        let (changed_ports, unchanged): (BTreeSet<_>, BTreeSet<_>) =
            requested.into_iter().partition(|p| {
                let was = in_force.contains(p);
                if protect {
                    next.protected.insert(*p)
                } else {
                    next.protected.remove(p)
                };
                was != protect
            });
        let after: BTreeSet<ProtoPort> =
            next.protected.union(&self.config.protected).copied().collect();

        // Connections already established to newly protected ports survive.
        let added: BTreeSet<ProtoPort> = after.difference(&in_force).copied().collect();
        super::keep_established(&mut self.maps, &added)?;
        self.maps.set_protected(&in_force, &after)?;
        if let Err(err) = self.state_dir.save(&next) {
            self.maps.set_protected(&after, &in_force)?;
            return Err(err);
        }
        self.state = next;

        let verb = if protect { "protected" } else { "unprotected" };
        if !changed_ports.is_empty() {
            info!(ports = %ports::join(&changed_ports), "{verb}");
        }
        let mut message = Vec::new();
        if !changed_ports.is_empty() {
            message.push(format!("{verb} {}", ports::join(&changed_ports)));
        }
        if !unchanged.is_empty() {
            let already = if protect { "already protected" } else { "not protected" };
            message.push(format!("{} {already}", ports::join(&unchanged)));
        }
        changed(message.join("; "))
    }

    /// Removes an always-allowed network equal to `target`, and, for a single
    /// address, its allow entry and open flows.
    fn revoke(&mut self, target: Cidr) -> Result<serde_json::Value> {
        if self.config.allow.contains(&target) {
            bail!(
                "{target} is always allowed by {}; remove it there (and reload)",
                self.config.describe()
            );
        }
        let mut done = Vec::new();
        let mut ended = None;
        if self.state.allow_nets.contains(&target) {
            let mut next = self.state.clone();
            next.allow_nets.remove(&target);
            self.apply_nets(next)?;
            info!(network = %target, "no longer always allowed");
            done.push(format!("{target} is no longer always allowed"));
        }
        if target.is_host() {
            let addr = target.addr();
            let key = SourceKey::from(addr);
            let was_allowed = self.maps.revoke(&key)?;
            // Every flow of the address, however long ago it was opened.
            let flows = self.maps.end_flows(|flow, _| flow.src == key)?;
            if was_allowed || flows > 0 {
                info!(source = %addr, flows, "revoked");
                done.push(format!("revoked {addr} ({flows} open flows ended)"));
                ended = Some(flows as u64);
            }
        }
        let shown = if target.is_host() { target.addr().to_string() } else { target.to_string() };
        if done.is_empty() {
            bail!("{shown} is not in the allow list");
        }
        let mut record = audit::Record::now("revoked", shown);
        record.flows = ended;
        audit::append_or_warn(&self.state_dir, &record);
        changed(done.join("; "))
    }

    /// Applies a new set of always-allowed networks, then persists it; if it
    /// cannot be saved, the kernel is put back.
    fn apply_nets(&mut self, next: State) -> Result<()> {
        let in_force = self.allowed_nets();
        let after: BTreeSet<Cidr> = next.allow_nets.union(&self.config.allow).copied().collect();
        self.maps.set_allowed_nets(&in_force, &after)?;
        if let Err(err) = self.state_dir.save(&next) {
            self.maps.set_allowed_nets(&after, &in_force)?;
            return Err(err);
        }
        self.state = next;
        Ok(())
    }

    fn listing(&self) -> Result<Listing> {
        let now = clock::boot_ns();
        let mut allowed: Vec<AllowedSource> = self
            .maps
            .allowed()?
            .into_iter()
            .filter(|(_, entry)| entry.deadline_ns > now)
            .filter_map(|(key, entry)| {
                Some(AllowedSource {
                    addr: key.ip()?,
                    expires_in_ms: (entry.deadline_ns - now) / 1_000_000,
                    origin: match AllowOrigin::from_u32(entry.origin) {
                        Some(AllowOrigin::Manual) => "manual".into(),
                        Some(AllowOrigin::Knock) => {
                            format!("knock ({})", self.client_name(entry.client))
                        }
                        Some(AllowOrigin::Spa) => {
                            format!("spa ({})", self.client_name(entry.client))
                        }
                        None => format!("unknown ({})", entry.origin),
                    },
                })
            })
            .collect();
        allowed.sort_by_key(|a| a.addr);
        let settings = super::settings(&self.options);
        let now = clock::flow_ns();
        let mut flows: Vec<Flow> = self
            .maps
            .flows()?
            .into_iter()
            .filter(|(_, e)| !e.is_dead(now, &settings))
            .filter_map(|(key, entry)| {
                Some(Flow {
                    source: key.src.ip()?,
                    source_port: key.src_port,
                    port: key.dst_port,
                    proto: knock_common::Proto::from_number(key.proto)?,
                    idle_ms: now.saturating_sub(entry.last_seen_ns) / 1_000_000,
                    closing: entry.closing_until_ns != 0,
                })
            })
            .collect();
        flows.sort_by_key(|f| (f.source, f.port, f.source_port));
        Ok(Listing {
            protected: self.protected().into_iter().collect(),
            permanent: self.allowed_nets().into_iter().collect(),
            allowed,
            flows,
        })
    }

    fn status(&mut self) -> Result<Status> {
        Ok(Status {
            pid: std::process::id(),
            state_dir: self.state_dir.path().display().to_string(),
            pin_dir: self.program.pin_dir.display().to_string(),
            program_id: self.program.program_id()?,
            uptime_secs: self.started.elapsed().as_secs(),
            interfaces: self
                .program
                .attachments
                .iter()
                .map(|a| InterfaceStatus {
                    name: a.iface.clone(),
                    ifindex: a.ifindex,
                    mode: a.mode,
                })
                .collect(),
            counters: self
                .maps
                .counters()?
                .into_iter()
                .map(|(counter, value)| (counter.name().to_owned(), value))
                .collect(),
            open_window_secs: self.options.open_window.as_secs(),
            knock_timeout_secs: self.options.knock_timeout.as_secs(),
            idle_timeout_secs: self.options.idle_timeout.as_secs(),
            fail_open: self.options.fail_open,
            survives_kill: self.program.survives_kill(),
            allowed: self.maps.allowed()?.len(),
            flows: self.maps.flows()?.len(),
            clients: self.clients.len(),
            sequences: self.installed.count(),
            current_slots: {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.clients
                    .iter()
                    .filter_map(|c| Some((c.profile.name.clone(), c.profile.slot_at(now)?)))
                    .collect()
            },
            knocks_in_progress: self.maps.knock_states()?.len(),
            broken_clients: self.installed.broken().map(|id| self.client_name(id)).collect(),
            server_name: self.options.server_name.as_ref().ok().map(ToString::to_string),
        })
    }
}

fn changed(message: String) -> Result<serde_json::Value> {
    to_value(Changed { message, stopping: false })
}

fn to_value(value: impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|err| anyhow!("cannot encode the answer: {err}"))
}
