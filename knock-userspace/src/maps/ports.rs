//! Which ports are protected, which make up the knock space, and which take
//! SPA datagrams: one flag word per port number.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use knock_common::{Proto, ProtoPort, maps::port_flags};

use super::KernelMaps;

impl KernelMaps {
    /// Makes exactly `protected` protected, touching only the ports that
    /// change (and leaving the other flag bits of those ports alone).
    pub fn set_protected(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        protected: &BTreeSet<ProtoPort>,
    ) -> Result<()> {
        self.set_port_bits(before, protected, Proto::protected_flag)
    }

    /// Makes exactly `space` the knock space.
    pub fn set_knock_space(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        space: &BTreeSet<ProtoPort>,
    ) -> Result<()> {
        self.set_port_bits(before, space, Proto::knock_space_flag)
    }

    /// Makes exactly `ports` the SPA ports (UDP).
    pub fn set_spa_ports(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        ports: &BTreeSet<ProtoPort>,
    ) -> Result<()> {
        self.set_port_bits(before, ports, |proto| match proto {
            Proto::Udp => port_flags::SPA_UDP,
            Proto::Tcp => 0,
        })
    }

    /// The SPA ports, read back from the kernel.
    pub fn spa_ports(&self) -> Result<BTreeSet<ProtoPort>> {
        self.ports_flagged(|proto| match proto {
            Proto::Udp => port_flags::SPA_UDP,
            Proto::Tcp => 0,
        })
    }

    fn set_port_bits(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        after: &BTreeSet<ProtoPort>,
        bit_of: fn(Proto) -> u32,
    ) -> Result<()> {
        let ports: BTreeSet<u16> = before.symmetric_difference(after).map(|p| p.port).collect();
        for port in ports {
            let mut flags =
                self.port_flags.get(&u32::from(port), 0).context("cannot read PORT_FLAGS")?;
            for proto in Proto::ALL.into_iter().filter(|p| bit_of(*p) != 0) {
                if after.contains(&ProtoPort::new(proto, port)) {
                    flags |= bit_of(proto);
                } else {
                    flags &= !bit_of(proto);
                }
            }
            self.port_flags.set(u32::from(port), flags, 0).context("cannot write PORT_FLAGS")?;
        }
        Ok(())
    }

    /// The ports currently protected, read back from the kernel.
    pub fn protected(&self) -> Result<BTreeSet<ProtoPort>> {
        self.ports_flagged(Proto::protected_flag)
    }

    /// The knock space, read back from the kernel.
    pub fn knock_space(&self) -> Result<BTreeSet<ProtoPort>> {
        self.ports_flagged(Proto::knock_space_flag)
    }

    fn ports_flagged(&self, bit_of: fn(Proto) -> u32) -> Result<BTreeSet<ProtoPort>> {
        let mut out = BTreeSet::new();
        for (port, flags) in self.port_flags.iter().enumerate() {
            let flags = flags.context("cannot read PORT_FLAGS")?;
            for proto in Proto::ALL {
                if bit_of(proto) != 0 && flags & bit_of(proto) != 0 {
                    out.insert(ProtoPort::new(proto, port as u16));
                }
            }
        }
        Ok(out)
    }
}
