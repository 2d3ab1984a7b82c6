//! Why the core applies no CRT precomputation of its own: cggmp24's aux
//! info generation already leaves it on this member's own ring-Pedersen
//! parameters (the only ones whose factors it knows), so
//! `DirtyAuxInfo::precompute_crt` has nothing to add. Checked on the
//! TEST-ONLY fixture cluster, whose aux info cggmp24 made; if a cggmp24
//! update stops doing so, this fails and the core should do it.

use mpc_core::engine::KeyShare;
use mpc_core::{NodeId, Record, Secret};

fn share(records: &[Record]) -> Secret<KeyShare> {
    records
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::KeyShare { share, .. } => Some(share.clone()),
            _ => None,
        })
        .expect("a key share")
}

#[test]
fn aux_info_generation_leaves_crt_on_the_own_parameters_only_and_no_multiexp_tables() {
    let records = mpc_sim::fixtures::load_cluster(5).unwrap();
    for id in 1..=5u16 {
        let share = share(&records[&NodeId(id)]);
        let params = &share.expose().aux.pedersen_params;
        let with_crt: Vec<usize> = params.iter().enumerate().filter(|(_, p)| p.crt.is_some()).map(|(i, _)| i).collect();
        assert_eq!(with_crt, vec![usize::from(id - 1)], "node {id}: CRT data on exactly its own parameters");
        assert!(params.iter().all(|p| p.multiexp.is_none()), "node {id}: the fixture was made without tables");
    }
}
