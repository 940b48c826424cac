//! Agents and hubs as a test sees them: a hub started with `Agent::start_hub`, told to serve
//! agents (`peer add` on the hub's home), agents told to use it (`hub add`), devices that
//! know each other without any address (so no direct path exists), and a source shared with
//! the key of its first member.

use std::path::Path;

use crate::Agent;

impl Agent {
    /// This agent uses `hub`, and `hub` serves this agent.
    pub fn use_hub(&self, hub: &Agent) {
        let me = self.device_id();
        hub.json(&["peer", "add", &me]);
        let hub_id = hub.json(&["id"]);
        let (device, listen) = (
            hub_id["device_id"].as_str().expect("hub device_id"),
            hub_id["listen"].as_str().expect("hub listen"),
        );
        self.json(&["hub", "add", listen, device]);
    }

    /// Pins `other` without an address: this agent never dials it (and `other`, knowing this
    /// one the same way, never dials here), so they can meet only through a hub.
    pub fn know(&self, other: &Agent) {
        self.json(&["peer", "add", &other.device_id()]);
    }

    /// `tandemctl source key ID`.
    pub fn source_key(&self, id: &str) -> String {
        self.json(&["source", "key", id])["key"]
            .as_str()
            .expect("a key")
            .to_owned()
    }

    /// `tandemctl source add ID PATH --peer … --key KEY` (`format` "files" unless given).
    pub fn share_keyed(&self, id: &str, path: &Path, format: &str, peers: &[&Agent], key: &str) {
        let path = path.to_str().expect("temp paths are UTF-8");
        let devices: Vec<String> = peers.iter().map(|p| p.device_id()).collect();
        let mut args = vec!["source", "add", id, path, "--format", format];
        for device in &devices {
            args.extend(["--peer", device.as_str()]);
        }
        if !key.is_empty() {
            args.extend(["--key", key]);
        }
        self.json(&args);
    }
}
