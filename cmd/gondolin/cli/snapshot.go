package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/progress"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/snapshots"
	"github.com/spf13/cobra"
)

func newSnapshotCmd() *cobra.Command {
	var (
		name, output string
		live, stop   bool
	)
	c := &cobra.Command{
		Use:   "snapshot ID [--name N] [--output PATH] [--live] [--stop]",
		Short: "Checkpoint a running session (ls, inspect and rm manage snapshots)",
		Long: `Checkpoint a live session while it keeps running. Without --live, a disk
checkpoint: the guest's filesystem is frozen and its disk copied. With
--live, RAM and devices too: running processes, tmpfs contents and shell
state come back on resume. Resume with: gondolin bash --resume SNAP
(as many times as you like; the snapshot never changes).

--output PATH writes the snapshot's disk to PATH, with PATH.json (and
PATH.state.zst for --live) beside it; move them together. A disk file
moved alone still resumes, as a disk checkpoint. --stop then stops the
session (as Gondolin's snapshot does), once the snapshot is safe.

Snapshots are signed with this home's key. One this home did not make
(from elsewhere, edited, or taken before signing) is foreign: it resumes
as a disk checkpoint only (its live state is never loaded), with only
the mounts and network policy given on the command line, and only if
its disk opens no other file than this home's image.`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError("snapshot needs a session: gondolin snapshot ID [--live] (or: snapshot ls|inspect|rm)")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			if output != "" && remote() && !filepath.IsAbs(output) {
				return usageError("--output %s: the snapshot is written on the context's machine: give an absolute path there", output)
			}
			if output != "" {
				abs, err := filepath.Abs(output)
				if err != nil {
					return usageError("--output: %v", err)
				}
				output = abs
			}
			if name != "" {
				if err := snapshots.ValidName(name); err != nil {
					return usageError("--name: %v", err)
				}
			}
			client, err := dialSupervisor(true)
			if err != nil {
				return err
			}
			kind := "disk"
			if live {
				kind = "live"
			}
			status := progress.NewStatus(os.Stderr)
			status.Show(fmt.Sprintf("gondolin: taking a %s snapshot of %s...", kind, args[0]))
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			snap, err := client.Snapshot(ctx, args[0], sessions.SnapshotRequest{Name: name, Output: output, Live: live})
			status.Clear()
			if err != nil {
				return err
			}
			where := snap.ID
			if snap.Path != "" {
				where += " at " + snap.Path
			}
			// The supervisor's words, which may be another machine's.
			fmt.Printf("%s\n", termsafe.String(snap.ID))
			fmt.Fprintf(os.Stderr, "gondolin: %s\n", termsafe.String(fmt.Sprintf("%s snapshot %s of session %s, %s, in %s", snap.Kind, where, snap.Source,
				humanBytes(snap.Size()), time.Since(start).Round(10*time.Millisecond))))
			if stop {
				if _, err := client.Stop(context.Background(), args[0]); err != nil {
					return fmt.Errorf("snapshot %s is taken; stopping session %s: %w", snap.ID, args[0], err)
				}
			}
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "", "snapshot name (usable wherever an ID is)")
	c.Flags().StringVar(&output, "output", "", "write the snapshot's disk to this path (.qcow2) with its metadata beside it")
	c.Flags().BoolVar(&live, "live", false, "include RAM and devices: processes come back running")
	c.Flags().BoolVar(&stop, "stop", false, "stop the session once the snapshot is taken")
	c.AddCommand(newSnapshotLsCmd(), newSnapshotInspectCmd(), newSnapshotRmCmd())
	return c
}

func snapshotStore() (*snapshots.Store, error) {
	if err := hereOnly(); err != nil {
		return nil, err
	}
	home, err := layout.DefaultHome()
	if err != nil {
		return nil, err
	}
	return &snapshots.Store{Dir: home.Snapshots()}, nil
}

func newSnapshotLsCmd() *cobra.Command {
	var list listing
	c := &cobra.Command{
		Use:     "ls [--json | -q | --format TEMPLATE]",
		Aliases: []string{"list"},
		Short:   "List snapshots",
		Example: `  gondolin snapshot ls --format '{{.ID}} {{.Name}} {{.Kind}}'`,
		Args:    list.args,
		RunE: func(c *cobra.Command, args []string) error {
			// Own: this home signed it, so a resume trusts it whole.
			// Through the supervisor when one runs; a listing never
			// starts one (it would sweep and adopt: no read's business).
			var out []sessions.SnapshotInfo
			if client, err := dialSupervisor(remote()); err == nil {
				out, err = client.Snapshots(context.Background())
				if err != nil {
					return err
				}
			} else if remote() {
				return err // another machine's store is read there
			} else {
				store, err := snapshotStore()
				if err != nil {
					return err
				}
				if out, err = sessions.ListSnapshots(store); err != nil {
					return err
				}
			}
			return printListing(&list, out, func(s sessions.SnapshotInfo) string { return s.ID }, printSnapshots)
		},
	}
	list.register(c.Flags(), "snapshot IDs")
	return c
}

func printSnapshots(out []sessions.SnapshotInfo) error {
	w := newTable()
	fmt.Fprintln(w, "ID\tNAME\tKIND\tORIGIN\tSESSION\tIMAGE\tSIZE\tAGE\tPATH")
	for _, s := range out {
		origin := "this home"
		if !s.Own {
			origin = "foreign"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, dash(s.Name), s.Kind, origin, s.Source,
			termsafe.String(s.ImageRef), humanBytes(s.Size()), humanAge(time.Since(s.Created)), dash(termsafe.String(s.Path)))
	}
	return w.Flush()
}

func newSnapshotInspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect SNAP",
		Short: "Show a snapshot's metadata (SNAP: ID, prefix, name or disk path)",
		Args:  exactArgs(1, "a snapshot"),
		RunE: func(c *cobra.Command, args []string) error {
			var snap *snapshots.Snapshot
			client, err := dialSupervisor(remote())
			if remote() && err != nil {
				return err
			}
			if err == nil && apiCarries(args[0]) {
				if snap, err = client.GetSnapshot(context.Background(), args[0]); err != nil {
					return err
				}
			} else {
				// With no supervisor, or for a disk path (which the
				// supervisor would read from its own directory), the
				// store is read here.
				store, err := snapshotStore()
				if err != nil {
					return err
				}
				if snap, err = store.Resolve(args[0]); err != nil {
					return err
				}
			}
			return printJSON(snap)
		},
	}
}

func newSnapshotRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm SNAP...",
		Short: "Delete snapshots",
		Args:  atLeastOne("a snapshot"),
		RunE: func(c *cobra.Command, args []string) error {
			var client *sessions.Client // dialled for the first ref that needs it
			for _, ref := range args {
				var err error
				switch {
				case !apiCarries(ref):
					err = removeSnapshotHere(ref)
				case client == nil:
					if client, err = dialSupervisor(true); err != nil {
						return err
					}
					fallthrough
				default:
					err = client.RemoveSnapshot(context.Background(), ref)
				}
				if err != nil {
					return err
				}
				fmt.Println(ref)
			}
			return nil
		},
	}
}

// apiCarries reports whether the supervisor can be asked about a
// snapshot ref. A disk path cannot: the supervisor would read a relative
// one from its own directory. Nor can "", "." and "..", which a URL path
// cannot hold as a segment.
func apiCarries(ref string) bool {
	return !snapshots.IsPath(ref) && ref != "" && ref != "." && ref != ".."
}

// removeSnapshotHere answers rm for a ref the API cannot carry, in the
// words and error class it always had. It deletes nothing: a disk path
// names a file outside the store, which rm leaves to the user, and "",
// "." and ".." are no snapshot's ID or name.
func removeSnapshotHere(ref string) error {
	store, err := snapshotStore()
	if err != nil {
		return err
	}
	return store.Remove(ref)
}
