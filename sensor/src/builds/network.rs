//! A build's outbound traffic (its steps' and, when attributable, its daemon's) and the image
//! id dockerd stores.
use super::session::Outcome;
use super::{BuildTracker, NetEvent};
use crate::output::record::{Connect, DnsQuery, DnsResponse, FileWrite, Record, Timestamp};

impl BuildTracker {
    /// The build a network event belongs to, and the step index (None: the daemon/tool).
    pub(super) fn net_owner(
        &self,
        pid: u32,
        ts: Timestamp,
        tcp: bool,
    ) -> Option<(u64, Option<usize>)> {
        if let Some(m) = self.members.get(&pid) {
            return Some((m.key, m.step));
        }
        if !tcp {
            return None;
        }
        // The daemon on a build's behalf: only when exactly one build is open on it and it was
        // not pulling or pushing images for someone else meanwhile.
        let mut open = self
            .builds
            .iter()
            .filter(|(_, b)| b.daemon_pid == pid && b.outcome.is_none());
        let (k, b) = open.next()?;
        if open.next().is_some() {
            return None;
        }
        if self
            .daemon_image_requests
            .get(&pid)
            .is_some_and(|t| *t >= b.started && *t <= ts)
        {
            return None;
        }
        Some((*k, None))
    }

    pub(super) fn on_net(&mut self, n: NetEvent) {
        let tcp = n.protocol == "tcp" || n.protocol == "dns";
        match self.net_owner(n.pid, n.ts, tcp) {
            Some((key, step)) => self.add_net(key, step, n),
            None => {
                if let Some(p) = self.pending.iter_mut().find(|p| p.pids.contains(&n.pid))
                    && p.net.len() < 64
                {
                    p.net.push(n);
                }
            }
        }
    }

    pub(super) fn add_net(&mut self, key: u64, step: Option<usize>, n: NetEvent) {
        let classify = self.cfg.classify.clone();
        let Some(b) = self.builds.get_mut(&key) else {
            return;
        };
        let made_by = match step {
            Some(i) => (i + 1).to_string(),
            None => "daemon".to_string(),
        };
        b.add_record(n.record_id);
        b.touch(n.ts);
        let (addr, port, dns) = (n.addr.clone(), n.port, n.dns_name.clone());
        b.add_outbound(
            &n.addr,
            n.port,
            &n.protocol,
            n.dns_name.as_deref(),
            made_by,
            n.failed,
            n.ts,
            || classify(&addr, port, dns.as_deref()),
        );
    }

    pub(super) fn on_connect(&mut self, rec: &Record, c: &Connect) {
        let (addr, port) = match (&c.dst_addr, &c.path) {
            (Some(a), _) => (a.clone(), c.dst_port.unwrap_or(0)),
            (None, Some(p)) => (p.clone(), 0),
            (None, None) => return,
        };
        let dns_name = self
            .net_owner(c.process.pid, rec.ts, true)
            .and_then(|(key, _)| self.resolved.get(&(key, addr.clone())).cloned());
        self.on_net(NetEvent {
            record_id: rec.id,
            ts: rec.ts,
            pid: c.process.pid,
            addr,
            port,
            protocol: c.protocol.clone(),
            dns_name,
            failed: c.result == "failed",
        });
    }

    /// Remember what a build's processes resolved, so that the build's connects to those
    /// addresses carry the name (whichever of its processes looked it up).
    pub(super) fn on_dns_response(&mut self, rec: &Record, d: &DnsResponse) {
        let Some((key, _)) = self.net_owner(d.process.pid, rec.ts, true) else {
            return;
        };
        if self.resolved.len() >= 4096 {
            self.resolved.clear();
        }
        for a in &d.addrs {
            self.resolved.insert((key, a.clone()), d.query_name.clone());
        }
    }

    pub(super) fn on_dns(&mut self, rec: &Record, d: &DnsQuery) {
        self.on_net(NetEvent {
            record_id: rec.id,
            ts: rec.ts,
            pid: d.process.pid,
            addr: d.server_addr.clone(),
            port: d.server_port,
            protocol: "dns".into(),
            dns_name: d.query_name.clone(),
            failed: false,
        });
    }

    /// dockerd stores an image as `.../imagedb/content/sha256/<id>`: the id of the build's
    /// image when one build is open on that daemon (a fallback when the output is not seen).
    pub(super) fn on_file(&mut self, rec: &Record, w: &FileWrite) {
        let Some((_, id)) = w.path.rsplit_once("/imagedb/content/sha256/") else {
            return;
        };
        if id.len() != 64 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
            return;
        }
        let pid = w.process.pid;
        let mut open = self
            .builds
            .values_mut()
            .filter(|b| b.daemon_pid == pid && b.outcome.is_none());
        if let (Some(b), None) = (open.next(), open.next()) {
            b.stored_image_id = Some(format!("sha256:{id}"));
            b.add_record(rec.id);
            // BuildKit stores an image only when it exports the result, the last thing a
            // successful build does: a partial build (whose output is not watched, so no other
            // end can be seen) ends there. The legacy builder stores one per step.
            if b.partial && b.conn.is_none() && b.builder == "buildkit" {
                b.end(Outcome::Succeeded, rec.ts);
            }
        }
    }
}
