//! Which cloud service a rated meter belongs to: what summaries group by
//! "service", what the dashboard's service breakdown shows, and what FOCUS
//! exports put in ServiceName and ServiceCategory.

/// A cloud service as tenants know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    /// The name shown to people (FOCUS ServiceName).
    pub name: &'static str,
    /// The FOCUS 1.2 ServiceCategory, one of the specification's values.
    pub category: &'static str,
    /// The OpenStack project that runs it.
    pub openstack: &'static str,
}

const COMPUTE: Service = Service {
    name: "Compute",
    category: "Compute",
    openstack: "nova",
};
const BLOCK_STORAGE: Service = Service {
    name: "Block Storage",
    category: "Storage",
    openstack: "cinder",
};
const IMAGES: Service = Service {
    name: "Images",
    category: "Storage",
    openstack: "glance",
};
const NETWORKING: Service = Service {
    name: "Networking",
    category: "Networking",
    openstack: "neutron",
};
const OBJECT_STORAGE: Service = Service {
    name: "Object Storage",
    category: "Storage",
    openstack: "swift",
};
const OTHER: Service = Service {
    name: "Other",
    category: "Other",
    openstack: "",
};

/// The service of a rated meter, from its name's first dotted part: the
/// default OpenStack meters (docs/meters.md) and the raw meter names
/// Ceilometer uses (`cpu`, `disk.*`, `ip.floating`, `storage.objects.*`)
/// both resolve; anything else is "Other".
pub fn service_of(meter: &str) -> Service {
    let head = meter.split('.').next().unwrap_or(meter);
    match head {
        "instance" | "vcpu" | "vcpus" | "ram" | "memory" | "disk" | "cpu" | "compute" => COMPUTE,
        "volume" | "snapshot" | "backup" => BLOCK_STORAGE,
        "image" => IMAGES,
        "floating_ip" | "ip" | "network" | "bandwidth" | "router" | "port" => NETWORKING,
        "object_storage" | "storage" | "objectstore" => OBJECT_STORAGE,
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_meters_and_ceilometer_names_have_services() {
        assert_eq!(service_of("instance.hours").name, "Compute");
        assert_eq!(service_of("ram.gib_hours").openstack, "nova");
        assert_eq!(service_of("volume.gib_hours").name, "Block Storage");
        assert_eq!(service_of("snapshot.gib_hours").category, "Storage");
        assert_eq!(service_of("image.gib_hours").name, "Images");
        assert_eq!(service_of("floating_ip.hours").name, "Networking");
        assert_eq!(service_of("network.egress.gb").category, "Networking");
        assert_eq!(service_of("ip.floating").name, "Networking");
        assert_eq!(
            service_of("object_storage.gib_hours").name,
            "Object Storage"
        );
        assert_eq!(service_of("storage.objects.size").openstack, "swift");
        assert_eq!(service_of("licence.windows").name, "Other");
    }
}
