package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// portReadLimit is the transport's own limit for a mount's first read:
// 64 MiB written by a bare host socket writer into the fs port (the one a
// mount's data comes through), read by dd in the guest with no protocol,
// no FUSE and no file behind it. The guest's virtio console driver takes
// the host's bytes a page at a time, so this is far below the guest's
// tmpfs.
func portReadLimit(e *env) float64 {
	dir, err := os.MkdirTemp(string(e.home), "port")
	check("port run dir", err)
	defer os.RemoveAll(dir)
	cfg := benchConfig(e, "")
	cfg.Dir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, a, err := (&vm.Templates{Dir: e.home.Templates()}).Clone(ctx, cfg, agentproto.Setup{})
	check("boot for the port limit", err)
	defer m.Kill()
	defer a.Close()
	conn, err := net.Dial("unix", filepath.Join(dir, layout.FSSocket))
	check("fs port", err)
	defer conn.Close()
	const size = 64 << 20
	port := `p=$(grep -l ` + agentproto.FSPortName + ` /sys/class/virtio-ports/*/name); p=/dev/$(basename $(dirname $p)); `
	// The guest times its own read, from its first byte to its last, so
	// that neither the exec's start nor the writer's start counts.
	script := port + fmt.Sprintf(`head -c 1 $p >/dev/null; s=$(cut -d' ' -f1 /proc/uptime); head -c %d $p >/dev/null; e=$(cut -d' ' -f1 /proc/uptime); echo $s $e`, size-1)
	// The writer keeps writing until the connection closes: the first
	// head reads more than the byte it prints.
	go func() {
		chunk := bytes.Repeat([]byte{'x'}, 1<<20)
		for {
			if _, err := conn.Write(chunk); err != nil {
				return
			}
		}
	}()
	var out bytes.Buffer
	_, err = a.Run(ctx, vm.Command{Exec: agentproto.Exec{Argv: []string{"sh", "-c", script}}, Stdout: &out})
	check("port read limit", err)
	var start, end float64
	if _, err := fmt.Sscan(strings.TrimSpace(out.String()), &start, &end); err != nil || end <= start {
		fatal(fmt.Errorf("port read limit: guest printed %q", out.String()))
	}
	return float64(size-1) / 1e6 / (end - start)
}
