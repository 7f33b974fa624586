"""The whole stack on one machine: `hybrid up`, `hybrid demo`, `hybrid pilot`, `hybrid dataflow`.

`up` starts a real Redis (embedded, AOF in the data dir), the keyring, built and signed edge models,
a worker pool per zone under the local autoscaler, N edge agents, the jobs API and the status page.
`demo` and `pilot` drive the e-learning workload through what `up` started; `dataflow` writes the
data-flow document from a policy. See docs/up-demo-pilot.md.
"""
