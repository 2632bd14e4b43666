//! A deterministic generator of realistic OpenStack-like usage, written as
//! NDJSON in one of two shapes ([`Shape`]): CloudEvents, one record each, or
//! what an OpenStack cloud really sends (Nova, Cinder, Neutron and Glance
//! notifications in oslo.messaging envelopes, and Ceilometer samples). It is
//! the data behind `tally gen`, the README's demo, the tests and the
//! benchmarks.
//!
//! The shape follows what Ceilometer reports for a cloud: every `interval`
//! (an hour by default) each live resource is polled, giving gauge samples
//! (instance existence with its flavor, vCPUs, RAM, root disk, volume size by
//! type, floating IPs, image sizes, object storage) and delta samples
//! (network bytes). Instances are created, resized and deleted across the
//! period and lifecycle events mark those moments. The same seed and start
//! give byte-identical output.

use std::fmt::Write as _;
use std::io::{self, Write};

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How generated usage is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// CloudEvents 1.0, one usage record per event (`POST /v1/events`).
    #[default]
    CloudEvents,
    /// What an OpenStack cloud sends, one message per line, each in an
    /// oslo.messaging v2 envelope (`POST /v1/events?format=openstack`, or
    /// the notification bus): Nova's legacy `compute.instance.*`
    /// notifications (create, resize, hourly `exists` audits, delete),
    /// Cinder's `volume.*` (hourly `exists`, delete), Neutron's
    /// `floatingip.delete.end`, Glance's `image.delete`, and Ceilometer
    /// `metering` notifications carrying the polled samples (network bytes,
    /// floating IPs, image and object storage sizes).
    OpenStack,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Number of instances over the period.
    pub instances: u32,
    /// Length of the period in days.
    pub days: u32,
    /// Random seed; the same seed gives the same output.
    pub seed: u64,
    /// Start of the period.
    pub start: DateTime<Utc>,
    /// Polling interval in minutes.
    pub interval_minutes: u32,
    /// How the usage is written.
    pub shape: Shape,
}

struct Flavor {
    name: &'static str,
    id: &'static str,
    vcpus: u32,
    ram_mb: u32,
    disk_gb: u32,
}

const FLAVORS: &[Flavor] = &[
    Flavor {
        name: "m1.tiny",
        id: "1",
        vcpus: 1,
        ram_mb: 512,
        disk_gb: 1,
    },
    Flavor {
        name: "m1.small",
        id: "2",
        vcpus: 1,
        ram_mb: 2048,
        disk_gb: 20,
    },
    Flavor {
        name: "m1.medium",
        id: "3",
        vcpus: 2,
        ram_mb: 4096,
        disk_gb: 40,
    },
    Flavor {
        name: "m1.large",
        id: "4",
        vcpus: 4,
        ram_mb: 8192,
        disk_gb: 80,
    },
    Flavor {
        name: "m1.xlarge",
        id: "5",
        vcpus: 8,
        ram_mb: 16384,
        disk_gb: 160,
    },
    Flavor {
        name: "g1.gpu",
        id: "6",
        vcpus: 16,
        ram_mb: 65536,
        disk_gb: 200,
    },
];
const ZONES: &[&str] = &["az1", "az2", "az3"];
const VOLUME_TYPES: &[&str] = &["ssd", "hdd", "nvme"];

struct Instance {
    id: String,
    project: usize,
    flavor: usize,
    resized_to: Option<(DateTime<Utc>, usize)>,
    created: DateTime<Utc>,
    deleted: Option<DateTime<Utc>>,
    zone: &'static str,
}

struct Simple {
    id: String,
    project: usize,
    created: DateTime<Utc>,
    deleted: Option<DateTime<Utc>>,
    size: u64,
    label: &'static str,
}

/// An instance as it is during one slot.
struct InstanceSlot {
    id: String,
    project: usize,
    zone: &'static str,
    created: DateTime<Utc>,
    deleted: Option<DateTime<Utc>>,
    /// Its flavor at the slot's start.
    flavor: usize,
    /// A resize inside the slot: when, and to which flavor.
    resize: Option<(DateTime<Utc>, usize)>,
}

struct Project {
    id: String,
    domain: String,
    user: String,
}

/// The generator; iterate it for NDJSON lines.
pub struct Generator {
    cfg: GenConfig,
    rng: ChaCha8Rng,
    projects: Vec<Project>,
    instances: Vec<Instance>,
    volumes: Vec<Simple>,
    floating_ips: Vec<Simple>,
    images: Vec<Simple>,
    containers: Vec<Simple>,
    slot: i64,
    slots: i64,
    pending: std::collections::VecDeque<String>,
    counter: u64,
}

fn uuid(rng: &mut ChaCha8Rng) -> String {
    let b: [u8; 16] = rng.random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Generator {
    /// A generator for `cfg`.
    pub fn new(cfg: GenConfig) -> Generator {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let period = Duration::days(i64::from(cfg.days.max(1)));
        let end = cfg.start + period;
        let n_projects = (cfg.instances / 8).max(1) as usize;
        let n_domains = (n_projects / 5).max(1);
        let domains: Vec<String> = (0..n_domains).map(|_| uuid(&mut rng)).collect();
        let projects: Vec<Project> = (0..n_projects)
            .map(|i| Project {
                id: uuid(&mut rng),
                domain: domains[i % n_domains].clone(),
                user: uuid(&mut rng),
            })
            .collect();
        let lifetime = |rng: &mut ChaCha8Rng, existing_share: f64, delete_share: f64| {
            let created = if rng.random_bool(existing_share) {
                cfg.start
            } else {
                cfg.start + Duration::seconds(rng.random_range(0..period.num_seconds()))
            };
            let deleted = rng.random_bool(delete_share).then(|| {
                let left = (end - created).num_seconds().max(2);
                created + Duration::seconds(rng.random_range(1..left))
            });
            (created, deleted)
        };
        let instances: Vec<Instance> = (0..cfg.instances)
            .map(|_| {
                let (created, deleted) = lifetime(&mut rng, 0.6, 0.3);
                let flavor = rng.random_range(0..FLAVORS.len());
                let resized_to = rng.random_bool(0.15).then(|| {
                    let until = deleted.unwrap_or(end);
                    let span = (until - created).num_seconds().max(2);
                    (
                        created + Duration::seconds(rng.random_range(1..span)),
                        (flavor + 1) % FLAVORS.len(),
                    )
                });
                Instance {
                    id: uuid(&mut rng),
                    project: rng.random_range(0..n_projects),
                    flavor,
                    resized_to,
                    created,
                    deleted,
                    zone: ZONES[rng.random_range(0..ZONES.len())],
                }
            })
            .collect();
        let simple =
            |rng: &mut ChaCha8Rng, n: usize, sizes: (u64, u64), labels: &[&'static str]| {
                (0..n)
                    .map(|i| {
                        let (created, deleted) = lifetime(rng, 0.7, 0.2);
                        Simple {
                            id: uuid(rng),
                            project: i % n_projects,
                            created,
                            deleted,
                            size: rng.random_range(sizes.0..sizes.1),
                            label: labels[rng.random_range(0..labels.len())],
                        }
                    })
                    .collect::<Vec<_>>()
            };
        let volumes = simple(
            &mut rng,
            (cfg.instances / 2) as usize,
            (10, 500),
            VOLUME_TYPES,
        );
        let floating_ips = simple(
            &mut rng,
            (cfg.instances / 3) as usize,
            (1, 2),
            &["ACTIVE", "DOWN"],
        );
        let images = simple(
            &mut rng,
            n_projects * 2,
            (200 << 20, 8 << 30),
            &["qcow2", "raw"],
        );
        let containers = simple(&mut rng, n_projects, (1 << 20, 500 << 30), &["standard"]);
        let slots = period.num_minutes() / i64::from(cfg.interval_minutes.max(1));
        Generator {
            cfg,
            rng,
            projects,
            instances,
            volumes,
            floating_ips,
            images,
            containers,
            slot: 0,
            slots,
            pending: Default::default(),
            counter: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        time: DateTime<Utc>,
        meter: &str,
        resource: &str,
        project: usize,
        kind: &str,
        volume: &str,
        unit: &str,
        attributes: &str,
    ) {
        self.counter += 1;
        let id = uuid(&mut self.rng);
        let p = &self.projects[project];
        let mut s = String::with_capacity(512);
        let _ = write!(
            s,
            r#"{{"specversion":"1.0","id":"{id}","source":"openstack:region-one/ceilometer","type":"{meter}","subject":"{resource}","time":"{}","datacontenttype":"application/json","data":{{"project_id":"{}","user_id":"{}","domain_id":"{}","volume":{volume},"unit":"{unit}","kind":"{kind}","attributes":{{{attributes}}}}}}}"#,
            time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            p.id,
            p.user,
            p.domain,
        );
        self.pending.push_back(s);
    }

    /// Queues one oslo.messaging v2 notification.
    fn notify(
        &mut self,
        time: DateTime<Utc>,
        publisher: &str,
        event_type: &str,
        project: usize,
        payload: serde_json::Value,
    ) {
        self.counter += 1;
        let p = &self.projects[project];
        let message = serde_json::json!({
            "message_id": uuid(&mut self.rng),
            "publisher_id": publisher,
            "event_type": event_type,
            "priority": "INFO",
            "payload": payload,
            "timestamp": openstack_time(time),
            // The actor; Tally bills the owner named in the payload.
            "_context_project_id": p.id,
            "_context_user_id": p.user,
            "_context_request_id": format!("req-{}", uuid(&mut self.rng)),
        });
        let envelope = serde_json::json!({
            "oslo.version": "2.0",
            "oslo.message": message.to_string(),
        });
        self.pending.push_back(envelope.to_string());
    }

    /// One Ceilometer sample, as its `metering` notifications carry them.
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &mut self,
        time: DateTime<Utc>,
        meter: &str,
        kind: &str,
        unit: &str,
        volume: u64,
        resource: &str,
        project: usize,
        metadata: serde_json::Value,
    ) -> serde_json::Value {
        let p = &self.projects[project];
        serde_json::json!({
            "source": "openstack",
            "counter_name": meter,
            "counter_type": kind,
            "counter_unit": unit,
            "counter_volume": volume,
            "user_id": p.user,
            "project_id": p.id,
            "resource_id": resource,
            "timestamp": time.to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
            "resource_metadata": metadata,
            "message_id": uuid(&mut self.rng),
            "monotonic_time": null,
        })
    }

    /// A Nova legacy instance payload.
    fn instance_payload(
        &self,
        i: usize,
        flavor: &Flavor,
        state: &str,
        extra: serde_json::Value,
    ) -> serde_json::Value {
        let inst = &self.instances[i];
        let p = &self.projects[inst.project];
        let mut payload = serde_json::json!({
            "tenant_id": p.id,
            "user_id": p.user,
            "instance_id": inst.id,
            "display_name": format!("vm-{}", &inst.id[..8]),
            "instance_type": flavor.name,
            "instance_type_id": flavor.id.parse::<u32>().unwrap_or(0),
            "instance_flavor_id": flavor.id,
            "vcpus": flavor.vcpus,
            "memory_mb": flavor.ram_mb,
            "root_gb": flavor.disk_gb,
            "disk_gb": flavor.disk_gb,
            "ephemeral_gb": 0,
            "state": state,
            "state_description": "",
            "availability_zone": inst.zone,
            "host": format!("compute-{}", &inst.id[..2]),
            "created_at": openstack_time(inst.created),
            "launched_at": openstack_time(inst.created),
            "image_ref_url": "http://glance:9292/images/cirros",
        });
        if let (Some(o), serde_json::Value::Object(e)) = (payload.as_object_mut(), extra) {
            o.extend(e);
        }
        payload
    }

    /// The current slot's start and end.
    fn slot_bounds(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let interval = Duration::minutes(i64::from(self.cfg.interval_minutes.max(1)));
        let start = self.cfg.start + interval * self.slot as i32;
        (start, start + interval)
    }

    /// Instance `i` during the current slot, if it exists then.
    fn instance_in_slot(&self, i: usize) -> Option<InstanceSlot> {
        let (slot_start, slot_end) = self.slot_bounds();
        let inst = &self.instances[i];
        if !(inst.created < slot_end && inst.deleted.is_none_or(|d| d > slot_start)) {
            return None;
        }
        Some(InstanceSlot {
            id: inst.id.clone(),
            project: inst.project,
            zone: inst.zone,
            created: inst.created,
            deleted: inst.deleted,
            flavor: match inst.resized_to {
                Some((at, f)) if at <= slot_start => f,
                _ => inst.flavor,
            },
            resize: inst
                .resized_to
                .filter(|(at, _)| *at >= slot_start && *at < slot_end),
        })
    }

    /// The volumes, floating IPs, images or containers (`k` 0 to 3).
    fn simple_set(&self, k: usize) -> &[Simple] {
        match k {
            0 => &self.volumes,
            1 => &self.floating_ips,
            2 => &self.images,
            _ => &self.containers,
        }
    }

    fn fill_slot(&mut self) {
        if self.cfg.shape == Shape::OpenStack {
            return self.fill_slot_openstack();
        }
        let (slot_start, slot_end) = self.slot_bounds();
        let alive = |created: DateTime<Utc>, deleted: Option<DateTime<Utc>>| {
            created < slot_end && deleted.is_none_or(|d| d > slot_start)
        };
        for i in 0..self.instances.len() {
            let Some(InstanceSlot {
                id,
                project,
                zone,
                created,
                deleted,
                flavor: flavor_now,
                resize,
            }) = self.instance_in_slot(i)
            else {
                continue;
            };
            let f = &FLAVORS[flavor_now];
            let attrs = |status: &str, event: &str, f: &Flavor| {
                format!(
                    r#""flavor_name":"{}","flavor_id":"{}","vcpus":{},"memory_mb":{},"disk_gb":{},"availability_zone":"{zone}","status":"{status}","event_type":"{event}""#,
                    f.name, f.id, f.vcpus, f.ram_mb, f.disk_gb
                )
            };
            if created >= slot_start {
                let a = attrs("active", "compute.instance.create.end", f);
                self.event(
                    created, "instance", &id, project, "gauge", "1", "instance", &a,
                );
            }
            if let Some((at, to)) = resize {
                let a = attrs(
                    "active",
                    "compute.instance.resize.confirm.end",
                    &FLAVORS[to],
                );
                self.event(at, "instance", &id, project, "gauge", "1", "instance", &a);
            }
            let poll = slot_start.max(created) + Duration::seconds(self.rng.random_range(0..300));
            if deleted.is_none_or(|d| poll < d) && poll < slot_end {
                let a = attrs("active", "poll", f);
                self.event(poll, "instance", &id, project, "gauge", "1", "instance", &a);
                let sa = format!(r#""flavor_name":"{}""#, f.name);
                self.event(
                    poll,
                    "vcpus",
                    &id,
                    project,
                    "gauge",
                    &f.vcpus.to_string(),
                    "vcpu",
                    &sa,
                );
                self.event(
                    poll,
                    "memory",
                    &id,
                    project,
                    "gauge",
                    &f.ram_mb.to_string(),
                    "MiB",
                    &sa,
                );
                self.event(
                    poll,
                    "disk.root.size",
                    &id,
                    project,
                    "gauge",
                    &f.disk_gb.to_string(),
                    "GiB",
                    &sa,
                );
                let out: u64 = self.rng.random_range(0..5_000_000_000);
                let inn: u64 = self.rng.random_range(0..2_000_000_000);
                let nic = format!("{id}-tap0");
                let na = format!(r#""instance_id":"{id}""#);
                self.event(
                    poll,
                    "network.outgoing.bytes",
                    &nic,
                    project,
                    "delta",
                    &out.to_string(),
                    "B",
                    &na,
                );
                self.event(
                    poll,
                    "network.incoming.bytes",
                    &nic,
                    project,
                    "delta",
                    &inn.to_string(),
                    "B",
                    &na,
                );
            }
            if let Some(d) = deleted.filter(|d| *d >= slot_start && *d < slot_end) {
                let a = attrs("deleted", "compute.instance.delete.end", f);
                self.event(d, "instance", &id, project, "gauge", "0", "instance", &a);
            }
        }
        let simple_sets: [(&str, &str, &str); 4] = [
            ("volume.size", "GiB", "volume_type"),
            ("ip.floating", "ip", "status"),
            ("image.size", "B", "disk_format"),
            ("storage.objects.size", "B", "storage_policy"),
        ];
        for (k, (meter, unit, label_name)) in simple_sets.iter().enumerate() {
            for i in 0..self.simple_set(k).len() {
                let r = &self.simple_set(k)[i];
                if !alive(r.created, r.deleted) {
                    continue;
                }
                let (id, project, size, label, created, deleted) = (
                    r.id.clone(),
                    r.project,
                    r.size,
                    r.label,
                    r.created,
                    r.deleted,
                );
                if let Some(d) = deleted.filter(|d| *d >= slot_start && *d < slot_end) {
                    // Deleted: its last record says so, and nothing of it
                    // is billed after.
                    let attrs = format!(
                        r#""{label_name}":"{label}","availability_zone":"az1","status":"deleted""#
                    );
                    self.event(d, meter, &id, project, "gauge", "0", unit, &attrs);
                }
                let poll =
                    slot_start.max(created) + Duration::seconds(self.rng.random_range(0..300));
                if deleted.is_some_and(|d| poll >= d) || poll >= slot_end {
                    continue;
                }
                // Object storage grows a little every poll; the rest is steady.
                let volume = if k == 3 {
                    size + (self.slot as u64) * 1_048_576
                } else {
                    size
                };
                let attrs = format!(r#""{label_name}":"{label}","availability_zone":"az1""#);
                self.event(
                    poll,
                    meter,
                    &id,
                    project,
                    "gauge",
                    &volume.to_string(),
                    unit,
                    &attrs,
                );
            }
        }
    }
}

impl Generator {
    fn fill_slot_openstack(&mut self) {
        use serde_json::json;
        let (slot_start, slot_end) = self.slot_bounds();
        let alive = |created: DateTime<Utc>, deleted: Option<DateTime<Utc>>| {
            created < slot_end && deleted.is_none_or(|d| d > slot_start)
        };
        for i in 0..self.instances.len() {
            let Some(InstanceSlot {
                id,
                project,
                created,
                deleted,
                flavor: flavor_now,
                resize,
                ..
            }) = self.instance_in_slot(i)
            else {
                continue;
            };
            let publisher = format!("compute.compute-{}", &id[..2]);
            let f = &FLAVORS[flavor_now];
            if created >= slot_start {
                let payload = self.instance_payload(i, f, "active", json!({}));
                self.notify(
                    created,
                    &publisher,
                    "compute.instance.create.end",
                    project,
                    payload,
                );
            }
            if let Some((at, to)) = resize {
                let payload = self.instance_payload(i, &FLAVORS[to], "active", json!({}));
                self.notify(
                    at,
                    &publisher,
                    "compute.instance.resize.confirm.end",
                    project,
                    payload,
                );
            }
            let poll = slot_start.max(created) + Duration::seconds(self.rng.random_range(0..300));
            if deleted.is_none_or(|d| poll < d) && poll < slot_end {
                // Nova's audit of the hour (instance_usage_audit_period =
                // hour), then Ceilometer's network pollster.
                let payload = self.instance_payload(
                    i,
                    f,
                    "active",
                    json!({
                        "audit_period_beginning": openstack_time(slot_start),
                        "audit_period_ending": openstack_time(slot_end),
                    }),
                );
                self.notify(
                    poll,
                    &publisher,
                    "compute.instance.exists",
                    project,
                    payload,
                );
                let out: u64 = self.rng.random_range(0..5_000_000_000);
                let inn: u64 = self.rng.random_range(0..2_000_000_000);
                let nic = format!("{id}-tap0");
                let meta =
                    json!({"instance_id": id, "vnic_name": "tap0", "flavor": {"name": f.name}});
                let samples = vec![
                    self.sample(
                        poll,
                        "network.outgoing.bytes",
                        "delta",
                        "B",
                        out,
                        &nic,
                        project,
                        meta.clone(),
                    ),
                    self.sample(
                        poll,
                        "network.incoming.bytes",
                        "delta",
                        "B",
                        inn,
                        &nic,
                        project,
                        meta,
                    ),
                ];
                self.notify(
                    poll,
                    "ceilometer.polling",
                    "metering",
                    project,
                    json!(samples),
                );
            }
            if let Some(d) = deleted.filter(|d| *d >= slot_start && *d < slot_end) {
                let payload = self.instance_payload(
                    i,
                    f,
                    "deleted",
                    json!({
                        "deleted_at": openstack_time(d),
                        "terminated_at": openstack_time(d),
                    }),
                );
                self.notify(
                    d,
                    &publisher,
                    "compute.instance.delete.end",
                    project,
                    payload,
                );
            }
        }
        for k in 0..4 {
            for i in 0..self.simple_set(k).len() {
                let r = &self.simple_set(k)[i];
                if !alive(r.created, r.deleted) {
                    continue;
                }
                let (id, project, size, label, created, deleted) = (
                    r.id.clone(),
                    r.project,
                    r.size,
                    r.label,
                    r.created,
                    r.deleted,
                );
                let owner = self.projects[project].id.clone();
                let poll =
                    slot_start.max(created) + Duration::seconds(self.rng.random_range(0..300));
                let polled = deleted.is_none_or(|d| poll < d) && poll < slot_end;
                let gone = deleted.filter(|d| *d >= slot_start && *d < slot_end);
                match k {
                    0 => {
                        let user = self.projects[project].user.clone();
                        let volume = |status: &str| {
                            json!({
                                "tenant_id": owner,
                                "user_id": user,
                                "volume_id": id,
                                "display_name": format!("vol-{}", &id[..8]),
                                "size": size,
                                "volume_type": label,
                                "status": status,
                                "availability_zone": "az1",
                                "created_at": openstack_time(created),
                            })
                        };
                        if polled {
                            let mut payload = volume("available");
                            payload["audit_period_beginning"] = json!(openstack_time(slot_start));
                            payload["audit_period_ending"] = json!(openstack_time(slot_end));
                            self.notify(
                                poll,
                                "volume.cinder-volume",
                                "volume.exists",
                                project,
                                payload,
                            );
                        }
                        if let Some(d) = gone {
                            let payload = volume("deleted");
                            self.notify(
                                d,
                                "volume.cinder-volume",
                                "volume.delete.end",
                                project,
                                payload,
                            );
                        }
                    }
                    1 => {
                        if polled {
                            let meta = json!({"status": label, "floating_ip_address": format!("203.0.113.{}", i % 250)});
                            let s = self.sample(
                                poll,
                                "ip.floating",
                                "gauge",
                                "ip",
                                1,
                                &id,
                                project,
                                meta,
                            );
                            self.notify(
                                poll,
                                "ceilometer.polling",
                                "metering",
                                project,
                                json!([s]),
                            );
                        }
                        if let Some(d) = gone {
                            // Neutron's delete names only the id; the actor
                            // (here the owner) is in the context.
                            let payload = json!({"floatingip_id": id});
                            self.notify(
                                d,
                                "network.neutron-server",
                                "floatingip.delete.end",
                                project,
                                payload,
                            );
                        }
                    }
                    2 => {
                        if polled {
                            let meta = json!({"disk_format": label, "container_format": "bare", "status": "active"});
                            let s = self.sample(
                                poll,
                                "image.size",
                                "gauge",
                                "B",
                                size,
                                &id,
                                project,
                                meta,
                            );
                            self.notify(
                                poll,
                                "ceilometer.polling",
                                "metering",
                                project,
                                json!([s]),
                            );
                        }
                        if let Some(d) = gone {
                            let payload = json!({
                                "id": id,
                                "owner": owner,
                                "size": size,
                                "status": "deleted",
                                "disk_format": label,
                                "container_format": "bare",
                                "deleted_at": openstack_time(d),
                            });
                            self.notify(d, "image.localhost", "image.delete", project, payload);
                        }
                    }
                    _ => {
                        // Object storage grows a little every poll; an
                        // emptied account reports zero.
                        let bytes = size + (self.slot as u64) * 1_048_576;
                        let at_end = gone.map(|d| (d, 0u64));
                        for (t, v) in polled.then_some((poll, bytes)).into_iter().chain(at_end) {
                            let meta = json!({"storage_policy": label});
                            let s = self.sample(
                                t,
                                "storage.objects.size",
                                "gauge",
                                "B",
                                v,
                                &owner,
                                project,
                                meta,
                            );
                            self.notify(t, "ceilometer.polling", "metering", project, json!([s]));
                        }
                    }
                }
            }
        }
    }
}

/// Times as oslo.messaging and Nova write them: naive UTC with a space.
fn openstack_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

impl Iterator for Generator {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        while self.pending.is_empty() {
            if self.slot >= self.slots {
                return None;
            }
            self.fill_slot();
            self.slot += 1;
        }
        self.pending.pop_front()
    }
}

/// Writes the generated events as NDJSON; returns how many.
pub fn write_ndjson(cfg: GenConfig, out: &mut impl Write) -> io::Result<u64> {
    let mut n = 0;
    for line in Generator::new(cfg) {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use decoding::decode_all;

    mod decoding {
        use chrono::Utc;
        use tally_collect::{Decoder, Framing};

        pub fn decode_all(text: &str) -> (usize, usize) {
            let body = text.as_bytes().to_vec();
            let body = Framing::Ndjson.split(&body.into()).expect("ndjson splits");
            let mut ok = 0;
            let mut bad = 0;
            for e in &body {
                match tally_collect::CloudEventsDecoder.decode(e, Utc::now()) {
                    Ok(_) => ok += 1,
                    Err(err) => {
                        eprintln!("{}: {}", String::from_utf8_lossy(e), err.message);
                        bad += 1
                    }
                }
            }
            (ok, bad)
        }
    }

    fn cfg(seed: u64) -> GenConfig {
        GenConfig {
            instances: 20,
            days: 2,
            seed,
            start: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
            interval_minutes: 60,
            shape: Shape::CloudEvents,
        }
    }

    fn text(c: GenConfig) -> String {
        let mut v = Vec::new();
        write_ndjson(c, &mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        assert_eq!(text(cfg(7)), text(cfg(7)));
        assert_ne!(text(cfg(7)), text(cfg(8)));
    }

    #[test]
    fn every_event_is_valid_and_meters_are_realistic() {
        let t = text(cfg(1));
        let (ok, bad) = decode_all(&t);
        assert_eq!(bad, 0);
        assert!(ok > 20 * 48 * 4, "expected hourly samples, got {ok}");
        for meter in [
            "\"type\":\"instance\"",
            "\"type\":\"vcpus\"",
            "\"type\":\"memory\"",
            "\"type\":\"volume.size\"",
            "\"type\":\"ip.floating\"",
            "\"type\":\"image.size\"",
            "\"type\":\"storage.objects.size\"",
            "\"type\":\"network.outgoing.bytes\"",
            "compute.instance.create.end",
        ] {
            assert!(t.contains(meter), "missing {meter}");
        }
    }

    #[test]
    fn ids_are_unique() {
        let t = text(cfg(3));
        let ids: std::collections::HashSet<&str> = t
            .lines()
            .map(|l| &l[l.find("\"id\":\"").unwrap() + 6..][..36])
            .collect();
        assert_eq!(ids.len(), t.lines().count());
    }

    #[test]
    fn the_openstack_shape_decodes_as_openstack_and_rates_the_same_resources() {
        use bytes::Bytes;
        use tally_collect::Decoder;
        let c = GenConfig {
            shape: Shape::OpenStack,
            ..cfg(1)
        };
        let t = text(c.clone());
        assert_eq!(t, text(c), "deterministic");
        let mut meters = std::collections::BTreeMap::<String, usize>::new();
        let mut deleted = 0;
        for line in t.lines() {
            let records = tally_collect::OpenStackDecoder
                .decode(&Bytes::from(line.to_string()), Utc::now())
                .unwrap_or_else(|e| panic!("{line}: {}", e.message));
            assert!(!records.is_empty(), "billed nothing: {line}");
            for r in records {
                *meters.entry(r.meter.clone()).or_default() += 1;
                if r.attributes
                    .get("status")
                    .is_some_and(|s| s.text() == "deleted")
                {
                    deleted += 1;
                }
            }
        }
        for m in [
            "instance",
            "vcpus",
            "memory",
            "disk.root.size",
            "volume.size",
            "ip.floating",
            "image.size",
            "storage.objects.size",
            "network.outgoing.bytes",
            "network.incoming.bytes",
        ] {
            assert!(
                meters.get(m).copied().unwrap_or(0) > 0,
                "no {m}: {meters:?}"
            );
        }
        assert!(deleted > 0, "deletions are notified");
        // Every message is an oslo.messaging v2 envelope.
        for l in t.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["oslo.version"], "2.0", "{l}");
            assert!(v["oslo.message"].is_string(), "{l}");
        }
        // The same cloud in both shapes: the instance lifecycles agree.
        let ce = text(cfg(1));
        assert_eq!(
            ce.matches("compute.instance.create.end").count(),
            t.matches("compute.instance.create.end").count()
        );
    }
}
