// Package vm runs one QEMU micro-VM per Machine and speaks to the guest
// agent inside it (see agentproto): start, stop and adopt QEMU, save and
// restore a VM's state, and keep templates, saved VMs that every exec
// clones instead of booting.
//
// # Saving a VM's state
//
// A saved state is restored many times (a template, a live snapshot), so
// it must be a state the guest was really in. Two rules make it so:
//
//   - The vCPUs are stopped (QMP stop) before the migration starts and
//     stay stopped until it has been written. QEMU 7.2 under TCG loses
//     stores a running guest makes during the copy (see state.go), and
//     its restored copies crash in ways that show only later.
//   - For a template, the agent is parked first (agentproto's PARK): it
//     answers only from its handshake loop, once its last session has
//     ended, no request is being handled and no process runs. The saved
//     guest is then blocked reading its port, waiting for a new host; a
//     restored copy answers that host's HELLO, and refuses to run anything
//     until the host's setup has reseeded its RNG and set its clock.
//
// A state saved from a stopped guest loads stopped: Start resumes a
// restored VM once QEMU has loaded it.
//
// # Templates
//
// A template is published only after a clone of it has been restored,
// has answered the handshake and has run a command (the agent binary
// itself, which every image has). A clone that fails later anyway moves
// its template aside into broken/ (with the reason and the clone's
// console) so that the next use rebuilds it; a failure on the host (a
// full disk, a missing tool) blames no template. Clones back their disks
// with a hard link to the template's disk in their own directory, so
// moving a template aside does not break a VM cloned from it (where no
// link can be made, another filesystem, the clone names the template's
// disk itself).
//
// # Waiting for a guest
//
// Every wait for a guest to come up or settle (a boot, a restore, a park,
// a template's check) watches QEMU's exit and the serial console: a Go
// runtime fatal or a kernel panic on the console ends the wait at once
// with that line, instead of at a deadline. Only output printed after the
// wait began counts, except for the first wait after QEMU starts. Calls
// into a running guest have deadlines instead (see Agent).
package vm
