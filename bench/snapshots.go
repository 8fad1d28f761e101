package main

import (
	"context"
	"time"

	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/snapshots"
)

func init() {
	sections = append(sections, section{"snapshots: checkpoints and resume", benchSnapshots})
}

// longestRoundTrip runs `true` in the session over and over while f runs
// and returns the longest round trip.
func longestRoundTrip(ctx context.Context, client *sessions.Client, id string, f func()) time.Duration {
	stop := make(chan struct{})
	done := make(chan time.Duration)
	go func() {
		var longest time.Duration
		for {
			select {
			case <-stop:
				done <- longest
				return
			default:
			}
			start := time.Now()
			_, err := client.Exec(ctx, id, sessions.ExecRequest{Argv: []string{"true"}}, sessions.ExecStreams{})
			check("exec during a snapshot", err)
			longest = max(longest, time.Since(start))
		}
	}()
	f()
	close(stop)
	return <-done
}

// benchSnapshots times taking snapshots of a running session and getting
// a first command's answer from a VM resumed from each, next to a cold
// boot of the same image.
func benchSnapshots(e *env) []row {
	ctx, client, stop := startSupervisor(e, 15*time.Minute)
	defer stop()
	src, err := client.Create(ctx, sessions.CreateRequest{Keep: true, Command: []string{"sleep", "100000"}})
	check("create", err)

	var liveSnap, diskSnap durations
	var live, disk string
	// How long the guest stops answering during a live snapshot (it is
	// paused for the save and the disk copy), seen from the host as the
	// longest exec round trip into the session, next to the longest one
	// while nothing else happens.
	quiet := longestRoundTrip(ctx, client, src.ID, func() { time.Sleep(2 * time.Second) })
	var pause time.Duration
	for i := range *runs {
		start := time.Now()
		var s *snapshots.Snapshot
		rt := longestRoundTrip(ctx, client, src.ID, func() {
			var err error
			s, err = client.Snapshot(ctx, src.ID, sessions.SnapshotRequest{Live: true})
			check("live snapshot", err)
		})
		pause = max(pause, rt)
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
		return func() error { return gondolinExec(e, append(args, "--", "true")...) }
	}
	fromLive, err := timeN(*runs, execTrue("--resume", live))
	check("resume live", err)
	fromDisk, err := timeN(*runs, execTrue("--resume", disk))
	check("resume disk", err)
	// The same figure as foundation's (measured there when it ran).
	cold := e.coldExecFigure()
	return []row{
		{"snapshot --live of a running session", liveSnap.String(), "-", "-"},
		{"  longest exec round trip during it (the pause)", ms(pause), "quiet " + ms(quiet), ratio(pause, quiet)},
		{"snapshot (disk checkpoint)", diskSnap.String(), "-", "-"},
		{"exec -- true resumed from a live snapshot", fromLive.String(), "cold " + ms(cold.pct(0.5)), ratio(fromLive.pct(0.5), cold.pct(0.5))},
		{"exec -- true resumed from a disk checkpoint", fromDisk.String(), "cold " + ms(cold.pct(0.5)), ratio(fromDisk.pct(0.5), cold.pct(0.5))},
		{"exec -- true, cold boot (the limit)", cold.String(), cold.String(), "1.00x"},
	}
}
