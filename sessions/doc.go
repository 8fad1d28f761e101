// Package sessions makes gondolin's VMs from a Spec and keeps them for as
// long as they are wanted: for one command (Runtime.Exec) or, in the
// supervisor, as sessions that outlive the dashboard and the CLI.
//
// A reader finds each part of a session's life in its own file:
//
//   - spec.go, specflags.go: what a VM should be, and the one builder
//     that turns typed flags (CLI or dashboard form) into a Spec.
//   - runtime.go: Spec to running VM (image, warm pool claim, template
//     clone or cold boot, network, mounts, agent); oneshot.go uses it
//     for exec.
//   - pool.go: the warm pool, VMs restored ahead of need, which new
//     sessions and one-shot execs claim.
//   - supervisor.go: the Supervisor (its sessions, lookup, listing,
//     removal, Close).
//   - create.go: making a session, booted fresh or resumed from a
//     snapshot, and registering it (one path for both); while it is
//     made it is listed as creating, with the step it is at.
//   - adopt.go: a restarted supervisor taking over the VMs an earlier one
//     left running.
//   - session.go: one session's life: watching its VM and agent,
//     stopping, the VM's death, and the one path that releases what
//     served the VM.
//   - terminals.go, pty.go: a session's terminals and their emulators.
//   - network.go, access.go, snapshot.go: live policy, ingress and SSH,
//     snapshots.
//   - server.go, apistream.go, apirun.go, api.go: the HTTP API, which
//     only decodes and encodes (apirun.go: one-shot exec); client.go and
//     attach.go: its client.
//
// Spec to VM stays in this package, not one of its own: the supervisor
// and one-shot exec are its only users and share its types (Spec,
// Instance), and the warm pool lives between the two.
package sessions
