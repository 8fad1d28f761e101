package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/sessions"
)

func init() {
	sections = append(sections, section{"snapshots: checkpoints and resume", benchSnapshots})
}

// benchSnapshots times taking snapshots of a running session and getting
// a first command's answer from a VM resumed from each, next to a cold
// boot of the same image.
func benchSnapshots(e *env) []row {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	client, err := sessions.Connect(ctx, e.home, sessions.ConnectOptions{Start: true, Executable: e.bin})
	check("start supervisor", err)
	defer client.StopSupervisor(context.Background(), true)
	src, err := client.Create(ctx, sessions.CreateRequest{Keep: true, Command: []string{"sleep", "100000"}})
	check("create", err)

	var liveSnap, diskSnap durations
	var live, disk string
	for i := range *runs {
		start := time.Now()
		s, err := client.Snapshot(ctx, src.ID, sessions.SnapshotRequest{Live: true})
		check("live snapshot", err)
		liveSnap = append(liveSnap, time.Since(start))
		start = time.Now()
		d, err := client.Snapshot(ctx, src.ID, sessions.SnapshotRequest{})
		check("disk snapshot", err)
		diskSnap = append(diskSnap, time.Since(start))
		if i == 0 {
			live, disk = s.ID, d.ID
		} else {
			client.RemoveSnapshot(ctx, s.ID)
			client.RemoveSnapshot(ctx, d.ID)
		}
	}
	execTrue := func(args ...string) func() error {
		return func() error {
			cmd := exec.Command(e.bin, append(append([]string{"exec"}, args...), "--", "true")...)
			cmd.Env = append(os.Environ(), layout.EnvHome+"="+string(e.home))
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		}
	}
	fromLive, err := timeN(*runs, execTrue("--resume", live))
	check("resume live", err)
	fromDisk, err := timeN(*runs, execTrue("--resume", disk))
	check("resume disk", err)
	cold, err := timeN(*runs, execTrue("--cold"))
	check("cold", err)
	return []row{
		{"snapshot --live of a running session", liveSnap.String(), "-", "-"},
		{"snapshot (disk checkpoint)", diskSnap.String(), "-", "-"},
		{"exec -- true resumed from a live snapshot", fromLive.String(), "cold " + ms(cold.pct(0.5)), ratio(fromLive.pct(0.5), cold.pct(0.5))},
		{"exec -- true resumed from a disk checkpoint", fromDisk.String(), "cold " + ms(cold.pct(0.5)), ratio(fromDisk.pct(0.5), cold.pct(0.5))},
		{"exec -- true, cold boot (the limit)", cold.String(), cold.String(), "1.00x"},
	}
}
