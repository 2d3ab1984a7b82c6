//! Deliberate bugs for proving that the simulator's checker bites. TEST
//! ONLY: a `PlantedBugs` with any bug switched on can only be built with the
//! `planted-bugs` feature, which no production build enables and no
//! configuration can select. With the feature off, every switch is a
//! constant `false`.

/// Which bugs are planted in a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    skip_certificate_check: bool,
    persist_consumption_late: bool,
    count_equivocators: bool,
    forget_consumed_on_recovery: bool,
    stop_refill_at_low_water: bool,
    never_prune: bool,
    confirm_in_mempool: bool,
}

impl PlantedBugs {
    /// No bugs: what every production node runs with.
    pub const NONE: PlantedBugs = PlantedBugs {
        skip_certificate_check: false,
        persist_consumption_late: false,
        count_equivocators: false,
        forget_consumed_on_recovery: false,
        stop_refill_at_low_water: false,
        never_prune: false,
        confirm_in_mempool: false,
    };

    pub fn any(&self) -> bool {
        *self != PlantedBugs::NONE
    }

    /// A signer releases partial signatures without checking the approval
    /// certificate.
    pub(crate) fn skip_certificate_check(&self) -> bool {
        self.skip_certificate_check
    }
    /// A signer persists a presignature's consumption one step after the
    /// partial signature leaves.
    pub(crate) fn persist_consumption_late(&self) -> bool {
        self.persist_consumption_late
    }
    /// Vote counting keeps counting a member after it equivocated.
    pub(crate) fn count_equivocators(&self) -> bool {
        self.count_equivocators
    }
    /// A restarted node forgets which presignatures it consumed.
    pub(crate) fn forget_consumed_on_recovery(&self) -> bool {
        self.forget_consumed_on_recovery
    }
    /// The coordinator stops refilling at the low-water mark instead of
    /// the target.
    pub(crate) fn stop_refill_at_low_water(&self) -> bool {
        self.stop_refill_at_low_water
    }
    /// Nothing ever leaves memory: final transactions and spent
    /// presignatures stay (what the history benchmark compares against).
    pub(crate) fn never_prune(&self) -> bool {
        self.never_prune
    }
    /// A transaction the backend's mempool holds counts as Confirmed.
    pub(crate) fn confirm_in_mempool(&self) -> bool {
        self.confirm_in_mempool
    }
}

#[cfg(feature = "planted-bugs")]
impl PlantedBugs {
    /// A signer signs whatever it is asked to.
    pub fn skipping_certificate_check() -> Self {
        PlantedBugs { skip_certificate_check: true, ..Self::NONE }
    }
    pub fn persisting_consumption_late() -> Self {
        PlantedBugs { persist_consumption_late: true, ..Self::NONE }
    }
    pub fn counting_equivocators() -> Self {
        PlantedBugs { count_equivocators: true, ..Self::NONE }
    }
    pub fn forgetting_consumed_on_recovery() -> Self {
        PlantedBugs { forget_consumed_on_recovery: true, ..Self::NONE }
    }
    pub fn stopping_refill_at_low_water() -> Self {
        PlantedBugs { stop_refill_at_low_water: true, ..Self::NONE }
    }
    pub fn never_pruning() -> Self {
        PlantedBugs { never_prune: true, ..Self::NONE }
    }
    pub fn confirming_in_mempool() -> Self {
        PlantedBugs { confirm_in_mempool: true, ..Self::NONE }
    }
}
