package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/imagestore/debian"
	"github.com/gondolin/gondolin/internal/progress"
	"github.com/spf13/cobra"
)

func newImageCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "image",
		Short: "Manage local guest images (build, ls, inspect)",
		Args:  noArgs,
	}
	c.AddCommand(newImageBuildCmd(), newImageLsCmd(), newImageInspectCmd())
	return c
}

func newImageBuildCmd() *cobra.Command {
	var config, tag, agent string
	c := &cobra.Command{
		Use:   "build [--config FILE] [--tag REF]",
		Short: "Build a guest image from Debian packages",
		Long: `Build a guest image from the distribution's packages (apt-get download and
dpkg-deb; no root, no other download): the cloud kernel, busybox, bash, curl
and ca-certificates with their libraries, the guest agent, and the packages
listed in the config file:

  {"packages": ["git", "python3"], "disk_size": "8G"}

A second build with the same inputs does nothing.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			cfg := imagestore.BuildConfig{}
			if config != "" {
				f, err := os.Open(config)
				if err != nil {
					return usageError("--config: %v", err)
				}
				defer f.Close()
				if cfg, err = imagestore.ParseConfig(f); err != nil {
					return fmt.Errorf("--config %s: %w", config, err)
				}
			}
			if tag != "" {
				if _, err := imagestore.ParseRef(tag); err != nil {
					return fmt.Errorf("--tag: %w", err)
				}
			}
			if agent == "" {
				agent = defaultAgentPath()
			}
			if _, err := os.Stat(agent); err != nil {
				return usageError("guest agent %s not found: build it with: make agent (or pass --agent PATH)", agent)
			}
			rt, err := runtime()
			if err != nil {
				return err
			}
			start := time.Now()
			img, reused, err := debian.Build(context.Background(), rt.Images, debian.Options{
				AgentPath: agent, Config: cfg, Tag: tag, Progress: progress.New(os.Stderr),
			})
			if err != nil {
				return err
			}
			verb := "built"
			if reused {
				verb = "up to date"
			}
			fmt.Printf("%s %s (%s) in %s\n", strings.Join(img.Refs, ", "), shortID(img.ID), verb, time.Since(start).Round(10*time.Millisecond))
			return nil
		},
	}
	c.Flags().StringVar(&config, "config", "", "JSON file listing extra Debian packages and the disk size")
	c.Flags().StringVar(&tag, "tag", "", "ref to tag the image with (default default:latest)")
	c.Flags().StringVar(&agent, "agent", "", "guest agent binary (default: gondolin-agent next to gondolin)")
	return c
}

// defaultAgentPath is the gondolin-agent built next to this binary.
func defaultAgentPath() string {
	exe, err := os.Executable()
	if err != nil {
		return "gondolin-agent"
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	return filepath.Join(filepath.Dir(exe), "gondolin-agent")
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		id = id[:12]
	}
	return id
}

func newImageLsCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:     "ls [--json]",
		Aliases: []string{"list"},
		Short:   "List local images",
		Args:    noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			rt, err := runtime()
			if err != nil {
				return err
			}
			images, err := rt.Images.List()
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(images)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "REF\tID\tKERNEL\tPACKAGES\tSIZE\tCREATED")
			for _, img := range images {
				refs := strings.Join(img.Refs, ",")
				if refs == "" {
					refs = "<none>"
				}
				m := img.Manifest
				size := m.Kernel.Size + m.Initramfs.Size + m.Rootfs.Size
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", refs, shortID(img.ID), m.KernelRelease,
					len(m.Packages), humanBytes(size), humanAge(time.Since(m.Created))+" ago")
			}
			return w.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func newImageInspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect REF",
		Short: "Show an image's manifest",
		Args:  exactArgs(1, "an image (name:tag, name or ID)"),
		RunE: func(c *cobra.Command, args []string) error {
			rt, err := runtime()
			if err != nil {
				return err
			}
			img, err := rt.Images.Resolve(args[0])
			if err != nil {
				return err
			}
			return printJSON(img)
		},
	}
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func humanAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
