package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/imagestore/debian"
	"github.com/gondolin/gondolin/imagestore/oci"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/progress"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newImageCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "image",
		Short: "Manage local guest images (build, pull, ls, inspect, tag, rm, import, export)",
		Args:  subcommandArgs,
		RunE:  showHelp,
	}
	c.AddCommand(newImageBuildCmd(), newImagePullCmd(), newImageLsCmd(), newImageInspectCmd(),
		newImageTagCmd(), newImageRmCmd(), newImageImportCmd(), newImageExportCmd())
	return c
}

func newImageBuildCmd() *cobra.Command {
	var config, tag, agent string
	var initConfig bool
	c := &cobra.Command{
		Use:   "build [--config FILE] [--tag REF] | --init-config",
		Short: "Build a guest image from Debian packages",
		Long: `Build a guest image from the distribution's packages (apt-get download and
dpkg-deb; no root, no other download): the cloud kernel, busybox, bash, curl
and ca-certificates with their libraries, the guest agent, and the packages
listed in the config file:

  {"packages": ["git", "python3"], "disk_size": "8G"}

--init-config prints the default config, every field filled in, to start
yours from. A second build with the same inputs does nothing.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if initConfig {
				if config != "" || tag != "" {
					return usageError("--init-config prints the default config; it builds nothing (no --config or --tag)")
				}
				return printDefaultConfig()
			}
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
			printStored(img, "built", reused, start)
			return nil
		},
	}
	c.Flags().StringVar(&config, "config", "", "JSON file listing extra Debian packages and the disk size")
	c.Flags().BoolVar(&initConfig, "init-config", false, "print the default build config (to write your own from) and exit")
	c.Flags().StringVar(&tag, "tag", "", "ref to tag the image with (default default:latest)")
	c.Flags().StringVar(&agent, "agent", "", "guest agent binary (default: gondolin-agent next to gondolin)")
	return c
}

// printDefaultConfig prints the build config an image gets without one,
// with every field present (packages empty: the base set is always in).
func printDefaultConfig() error {
	cfg, err := imagestore.BuildConfig{}.Resolve()
	if err != nil {
		return err
	}
	return printJSON(struct {
		Packages      []string `json:"packages"`
		KernelPackage string   `json:"kernel_package"`
		DiskSize      string   `json:"disk_size"`
	}{append([]string{}, cfg.Packages...), cfg.KernelPackage, cfg.DiskSize})
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

// printStored says what a build or pull left in the store.
func printStored(img *imagestore.Image, verb string, reused bool, start time.Time) {
	if reused {
		verb = "up to date"
	}
	fmt.Printf("%s %s (%s) in %s\n", strings.Join(img.Refs, ", "), shortID(img.ID), verb, time.Since(start).Round(10*time.Millisecond))
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		id = id[:12]
	}
	return id
}

func newImageLsCmd() *cobra.Command {
	var list listing
	c := &cobra.Command{
		Use:     "ls [--json | -q | --format TEMPLATE]",
		Aliases: []string{"list"},
		Short:   "List local images",
		Example: `  gondolin image ls --format '{{join .Refs ","}} {{.Manifest.KernelRelease}}'`,
		Args:    list.args,
		RunE: func(c *cobra.Command, args []string) error {
			rt, err := runtime()
			if err != nil {
				return err
			}
			images, err := rt.Images.List()
			if err != nil {
				return err
			}
			return printListing(&list, images, func(img imagestore.Image) string { return img.ID }, printImages)
		},
	}
	list.register(c.Flags(), "image IDs")
	return c
}

func printImages(images []imagestore.Image) error {
	w := newTable()
	fmt.Fprintln(w, "REF\tID\tKERNEL\tSOURCE\tSIZE\tCREATED")
	for _, img := range images {
		refs := strings.Join(img.Refs, ",")
		if refs == "" {
			refs = "<none>"
		}
		m := img.Manifest
		size := m.Kernel.Size + m.Initramfs.Size + m.Rootfs.Size
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", refs, shortID(img.ID), m.KernelRelease,
			imageSource(m), humanBytes(size), humanAge(time.Since(m.Created))+" ago")
	}
	return w.Flush()
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

// imageSource says where an image came from, for image ls.
func imageSource(m imagestore.Manifest) string {
	switch {
	case m.OCI != nil:
		return m.OCI.Source
	case len(m.Packages) > 0:
		return fmt.Sprintf("debian, %d packages", len(m.Packages))
	}
	return "import"
}

func newImagePullCmd() *cobra.Command {
	var tag string
	var insecure bool
	c := &cobra.Command{
		Use:   "pull REF [--tag NAME:TAG] [--insecure]",
		Short: "Make a guest image from a container image in a registry",
		Long: `Pull an OCI or Docker image (linux/amd64) from a registry, with the
credentials docker login saved, and make it a guest image: its layers become
the root disk, which boots with the kernel and agent of the default image
(build that first). The image's own entrypoint is not run; its environment
and working directory are recorded (see: gondolin image inspect).

  gondolin image pull alpine:3.20            tagged alpine:3.20
  gondolin image pull ghcr.io/o/tool:v1 --tag tool:latest
  gondolin exec --image alpine:3.20 -- cat /etc/os-release

Pulling the same image again does nothing.`,
		Args: exactArgs(1, "an image reference, such as alpine:3.20"),
		RunE: func(c *cobra.Command, args []string) error {
			if tag != "" {
				if _, err := imagestore.ParseRef(tag); err != nil {
					return fmt.Errorf("--tag: %w", err)
				}
			}
			rt, err := runtime()
			if err != nil {
				return err
			}
			start := time.Now()
			img, reused, err := oci.Pull(context.Background(), rt.Images, args[0], oci.Options{
				Tag: tag, Insecure: insecure, Progress: progress.New(os.Stderr),
			})
			if err != nil {
				return err
			}
			printStored(img, "pulled", reused, start)
			return nil
		},
	}
	c.Flags().StringVar(&tag, "tag", "", "local ref for the image (default: the repository's last name and the tag, e.g. alpine:3.20)")
	c.Flags().BoolVar(&insecure, "insecure", false, "allow a registry that speaks plain HTTP")
	return c
}

func newImageTagCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "tag SRC NAME:TAG",
		Short: "Give an image another ref",
		Args:  exactArgs(2, "an image (name:tag, name or ID) and a new NAME:TAG"),
		RunE: func(c *cobra.Command, args []string) error {
			dst, err := imagestore.ParseRef(args[1])
			if err != nil {
				return err
			}
			rt, err := runtime()
			if err != nil {
				return err
			}
			return rt.Images.Tag(args[0], dst)
		},
	}
}

func newImageRmCmd() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:     "rm REF... [-f]",
		Aliases: []string{"remove"},
		Short:   "Remove image refs, and images no ref points at any more",
		Long: `Remove a ref. When no other ref points at its image, the image goes too:
its manifest and every file no other image uses. An ID removes the image and
all its refs. An image that a session or snapshot uses stays unless -f.`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError("%s needs an image (name:tag, name or ID)", c.CommandPath())
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			rt, err := runtime()
			if err != nil {
				return err
			}
			opts := imagestore.RemoveOptions{
				InUse: sessions.ImageUsers(rt.Home),
				Force: force,
				Waiting: func() {
					fmt.Fprintln(os.Stderr, "waiting for a build, pull or import to finish...")
				},
			}
			var failed error
			for _, spec := range args {
				r, err := rt.Images.Remove(spec, opts)
				if errors.Is(err, errdefs.ErrNotFound) {
					// Not the store's advice to build it: it is being removed.
					err = errdefs.Errorf(errdefs.ErrNotFound, "no image %s to remove (see: gondolin image ls)", spec)
				}
				if err != nil {
					if len(args) > 1 {
						fmt.Fprintf(os.Stderr, "gondolin: %s\n", oneLine(err))
					}
					failed = err
					continue
				}
				for _, ref := range r.Untagged {
					fmt.Printf("untagged %s\n", ref)
				}
				if r.Deleted != "" {
					fmt.Printf("deleted %s (%d files, %s)\n", shortID(r.Deleted), r.Blobs, humanBytes(r.Bytes))
				}
				if len(r.Users) > 0 {
					fmt.Fprintf(os.Stderr, "warning: %s was still used by %s\n", spec, strings.Join(r.Users, ", "))
				}
			}
			if failed != nil && len(args) > 1 {
				return &exitError{code: exitFailure}
			}
			return failed
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "remove the image even while sessions or snapshots use it")
	return c
}

func newImageImportCmd() *cobra.Command {
	var tag string
	c := &cobra.Command{
		Use:   "import DIR [--tag NAME:TAG]",
		Short: "Store guest files from a directory as an image",
		Long: `Import a directory written by gondolin image export (manifest.json and
the files it names), or a bare directory holding vmlinux (a PVH ELF kernel)
or bzImage, initramfs.cpio (uncompressed newc, with the gondolin agent as
/init), and optionally rootfs.qcow2 or rootfs.img (a raw ext4 image).
Every file is checked: digests, sizes, formats; symlinks may not leave DIR.`,
		Args: exactArgs(1, "a directory"),
		RunE: func(c *cobra.Command, args []string) error {
			var ref imagestore.Ref
			if tag != "" {
				var err error
				if ref, err = imagestore.ParseRef(tag); err != nil {
					return fmt.Errorf("--tag: %w", err)
				}
			}
			if st, err := os.Stat(args[0]); err != nil || !st.IsDir() {
				return usageError("%s is not a directory", args[0])
			}
			rt, err := runtime()
			if err != nil {
				return err
			}
			img, err := rt.Images.Import(context.Background(), args[0])
			if err != nil {
				return err
			}
			if tag == "" {
				fmt.Printf("imported %s; name it with: gondolin image tag %s NAME:TAG\n", shortID(img.ID), shortID(img.ID))
				return nil
			}
			if err := rt.Images.Tag(img.ID, ref); err != nil {
				return err
			}
			fmt.Printf("imported %s as %s\n", shortID(img.ID), ref)
			return nil
		},
	}
	c.Flags().StringVar(&tag, "tag", "", "ref to tag the imported image with")
	return c
}

func newImageExportCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "export REF DIR",
		Short: "Write an image's manifest and files into a new directory",
		Long: `Write manifest.json and the image's files (kernel, initramfs, rootfs.qcow2,
agent) into DIR, which must not exist or be empty; gondolin image import
DIR brings them back, here or on another machine.`,
		Args: exactArgs(2, "an image (name:tag, name or ID) and a directory"),
		RunE: func(c *cobra.Command, args []string) error {
			rt, err := runtime()
			if err != nil {
				return err
			}
			img, err := rt.Images.Export(args[0], args[1])
			if err != nil {
				return err
			}
			fmt.Printf("exported %s (%s) to %s\n", args[0], shortID(img.ID), args[1])
			return nil
		},
	}
}
