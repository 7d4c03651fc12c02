//! `reload` and SIGHUP: the state file, the config file and the clients
//! are read again and what changed is applied. A control request and a
//! signal both land here.

use std::collections::BTreeSet;

use anyhow::Result;
use knock_common::allow::AllowOrigin;
use tracing::{info, warn};

use super::Daemon;
use crate::{
    audit,
    clients::{Client, ClientStore},
    footguns,
    nets::Cidr,
    ports::{self, ProtoPort},
};

impl Daemon {
    /// Re-reads the clients directory: new clients' sequences are installed,
    /// removed clients' stop at once and the sources they admitted go.
    pub(super) fn reload_clients(&mut self) -> Result<Vec<String>> {
        let clients = ClientStore::new(&self.state_dir).load()?;
        let before: Vec<u32> = self.clients.iter().map(|c| c.id).collect();
        let removed: Vec<Client> = self
            .clients
            .iter()
            .filter(|c| !clients.iter().any(|n| n.id == c.id))
            .cloned()
            .collect();
        self.clients = clients;
        self.knock_space = super::rotate::knock_space(&self.clients);
        self.rotate()?;
        for client in &self.clients {
            if !before.contains(&client.id) {
                info!(client = %client.profile.name, kind = client.profile.kind(), "client added");
            }
        }
        let mut notes = Vec::new();
        for client in removed {
            let (sources, flows) = self.revoke_admitted_by(client.id)?;
            info!(client = %client.profile.name, sources, flows,
                "client removed; its sequences no longer open the door and its sessions ended");
            notes.push(format!(
                "removed {}: its sequences are gone; sources it admitted revoked: {sources}; \
                 its open flows ended: {flows}",
                client.profile.name
            ));
            let mut record = audit::Record::now("client_removed", "-".to_owned());
            record.client = Some(client.profile.name.clone());
            record.flows = Some(flows as u64);
            audit::append_or_warn(&self.state_dir, &record);
        }
        Ok(notes)
    }

    /// `reload` and SIGHUP: re-reads the state file and the clients. Both
    /// are read in full before anything changes, so a broken file changes
    /// nothing; allowed sources, flows and knocks in progress stay.
    pub(super) fn reload(&mut self) -> Result<String> {
        let config = self.config.reread()?;
        let refusals = footguns::config_refusals(&config)?;
        let next = self.state_dir.load()?;
        ClientStore::new(&self.state_dir).load()?;
        footguns::force_or_refuse(
            &self.state_dir,
            self.options.force,
            &config.describe(),
            None,
            &refusals,
        )?;
        let (protected_before, nets_before) = (self.protected(), self.allowed_nets());
        let protected: BTreeSet<ProtoPort> =
            next.protected.union(&config.protected).copied().collect();
        let nets: BTreeSet<Cidr> = next.allow_nets.union(&config.allow).copied().collect();
        let added: BTreeSet<ProtoPort> = protected.difference(&protected_before).copied().collect();
        super::keep_established(&mut self.maps, &added)?;
        self.maps.set_protected(&protected_before, &protected)?;
        self.maps.set_allowed_nets(&nets_before, &nets)?;
        // The server name stays what it was: a new one would change every
        // fleet client's sequences at once, and --server-name (a Kubernetes
        // node's name, say) could not be re-read anyway.
        let renamed =
            config.server_name.filter(|name| Some(name) != self.config.server_name.as_ref());
        self.state = next;
        self.config = config;
        let mut notes = self.reload_clients()?;
        info!(
            ports = %ports::join(&protected),
            clients = self.clients.len(),
            "reloaded (interfaces, mode, timeouts and server_name take effect at the next start)"
        );
        if let Some(name) = renamed {
            let now = self.options.server_name.as_ref().map_or("none", |n| n.as_str());
            warn!(server_name = %name, in_force = %now,
                "server_name changed in the config file: it takes effect at the next start");
            notes.push(format!(
                "server_name is now {name} in the file; fleet clients' sequences stay derived \
                 for {now} until the daemon restarts"
            ));
        }
        let mut message = format!(
            "reloaded: protecting {}; {} clients",
            if protected.is_empty() { "nothing".to_owned() } else { ports::join(&protected) },
            self.clients.len()
        );
        for note in notes {
            message.push_str("; ");
            message.push_str(&note);
        }
        Ok(message)
    }

    /// What clients removed while no daemon ran had admitted: the kernel
    /// kept it through the take-over, so it ends now, as `client remove`
    /// would have ended it. Returns (sources, flows).
    pub(super) fn revoke_removed_clients(&mut self) -> Result<(usize, usize)> {
        let known: BTreeSet<u32> = self.clients.iter().map(|c| c.id).collect();
        // Client 0 is nobody: a manual allow, or a connection kept at start.
        let removed = |client: u32| client != 0 && !known.contains(&client);
        let sources = self.maps.remove_allowed(|_, entry| {
            entry.origin != AllowOrigin::Manual as u32 && removed(entry.client)
        })?;
        let flows = self.maps.end_flows(|_, flow| removed(flow.client))?;
        Ok((sources.len(), flows))
    }

    /// Revokes every source a client's knocks admitted and ends every flow
    /// they opened, whenever that was (a flow carries its client, so this
    /// holds long after the open window). Returns (sources, flows).
    fn revoke_admitted_by(&mut self, client: u32) -> Result<(usize, usize)> {
        let sources = self.maps.remove_allowed(|_, entry| {
            entry.origin != AllowOrigin::Manual as u32 && entry.client == client
        })?;
        for key in &sources {
            if let Some(addr) = key.ip() {
                info!(source = %addr, "revoked with its client");
            }
        }
        let flows = self.maps.end_flows(|_, flow| flow.client == client)?;
        Ok((sources.len(), flows))
    }
}
