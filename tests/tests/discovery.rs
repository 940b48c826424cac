//! LAN discovery in network namespaces this test makes (`ip netns`, a veth pair): two agents
//! on separate hosts find each other by device ID alone, with no address given, and sync.
//! Without root or `ip`, the test says it is skipped and why.

use std::process::Command;
use std::time::Duration;

use tandem_tests::{Agent, skip, tree};

const LIMIT: Duration = Duration::from_secs(120);

/// Two namespaces joined by a veth pair; removed on drop.
struct Hosts {
    a: String,
    b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    fn make() -> Result<Hosts, String> {
        let tag = std::process::id() % 100_000;
        let hosts = Hosts {
            a: format!("tandem-a-{tag}"),
            b: format!("tandem-b-{tag}"),
        };
        let (va, vb) = (format!("tva{tag}"), format!("tvb{tag}"));
        ip(&["netns", "add", &hosts.a])?;
        ip(&["netns", "add", &hosts.b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &hosts.a])?;
        ip(&["link", "set", &vb, "netns", &hosts.b])?;
        for (ns, dev, addr) in [
            (&hosts.a, &va, "10.77.0.1/24"),
            (&hosts.b, &vb, "10.77.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it the pair.
        let _ = ip(&["netns", "delete", &self.a]);
        let _ = ip(&["netns", "delete", &self.b]);
    }
}

#[test]
fn two_agents_on_a_lan_find_each_other_by_device_id_alone_and_sync() {
    let hosts = match Hosts::make() {
        Ok(h) => h,
        Err(why) => {
            skip(&format!(
                "network namespaces cannot be made here (they need root and iproute2): {why}"
            ));
            return;
        }
    };
    let a = Agent::start_in_netns(&hosts.a, "10.77.0.1:27480");
    let b = Agent::start_in_netns(&hosts.b, "10.77.0.2:27480");
    let (da, db) = (a.data_dir("docs"), b.data_dir("docs"));
    tree::write(&da.join("found.txt"), "over the LAN");
    tree::write(&da.join("sub/more.txt"), "and more");

    // Each knows the other's ID only: no address.
    a.json(&["peer", "add", &b.device_id()]);
    b.json(&["peer", "add", &a.device_id()]);
    a.share("docs", &da, &[&b]);
    b.share("docs", &db, &[&a]);

    a.await_connected(&[&b], LIMIT);
    tandem_tests::settle(&a, &b, LIMIT);
    tree::assert_same_trees(&da, &db);
    let log = format!("{}{}", a.log_text(), b.log_text());
    assert!(log.contains("heard a device on the LAN"), "{log}");
    assert!(log.contains("dialling a peer found on the LAN"), "{log}");
    drop(a);
    drop(b);
    drop(hosts);
}
