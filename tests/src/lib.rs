//! mpc-tests: the harness that runs real `mpc-node` processes for the
//! multi-process suites and the README's main command (one harness for
//! both, as Fedimint's devimint serves its demo and its tests).
