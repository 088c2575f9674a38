//! A network namespace joined to this one by a veth pair, for a server that must be able
//! to vanish: setting the link down drops every packet between the two sides, with no
//! reset or close reaching either, as when a host dies or a network partitions.

use std::process::Command;

/// The namespace and its link; removed when dropped.
pub struct Netns {
    pub name: String,
    /// The link's end in this namespace.
    host_link: String,
    /// The address of the far end, inside the namespace.
    pub address: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

impl Netns {
    /// Creates a namespace, and a veth pair with a /30 of 10.213.0.0/16 chosen from this
    /// process's id and `index`, so that tests running at once do not collide. `None`
    /// when this machine cannot (no `ip`, or no right to make namespaces).
    pub fn create(index: u8) -> Option<Netns> {
        let id = std::process::id() % 4096;
        let name = format!("jobd{id}n{index}");
        let host_link = format!("jd{id}h{index}");
        let peer_link = format!("jd{id}p{index}");
        let slot = (id * 7 + u32::from(index)) % 16_000;
        let (third, fourth) = (slot / 64, (slot % 64) * 4);
        let host_address = format!("10.213.{third}.{}", fourth + 1);
        let address = format!("10.213.{third}.{}", fourth + 2);
        if !Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|status| status.success()) {
            return None;
        }
        let netns = Netns { name: name.clone(), host_link: host_link.clone(), address: address.clone() };
        ip(&["link", "add", &host_link, "type", "veth", "peer", "name", &peer_link]);
        ip(&["link", "set", &peer_link, "netns", &name]);
        ip(&["addr", "add", &format!("{host_address}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{address}/30"), "dev", &peer_link]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &peer_link, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        Some(netns)
    }

    /// Cuts the link (every packet is lost, nothing is reset) or mends it.
    pub fn set_cut(&self, cut: bool) {
        ip(&["link", "set", &self.host_link, if cut { "down" } else { "up" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_link]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
