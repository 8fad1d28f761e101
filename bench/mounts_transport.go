package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// transportFigures are the limits under a mount's figures: an exec
// round trip (a request and its answer between host and guest, the
// output path of the change-latency rows) and the fs port's bare
// throughput each way.
type transportFigures struct {
	roundTrip durations
	toHostMBs float64
	// toGuestMBs is read by dd in the guest (busybox head -c reads the
	// same port several times slower: head, not the port, is slow).
	toGuestMBs float64
}

// measureTransport boots one VM (no mount: its fs port is free), times
// exec round trips, streams 64 MB from dd in the guest into the fs port,
// drained by a bare socket reader on the host (as foundation's "bare
// port" figure), then 64 MB from a bare socket writer on the host to dd
// in the guest, timed by the guest from its first byte to its last (the
// port holds the host's bytes until the guest opens it).
func measureTransport(e *env) transportFigures {
	dir, err := os.MkdirTemp(string(e.home), "transport")
	check("transport run dir", err)
	defer os.RemoveAll(dir)
	cfg := benchConfig(e, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, a, err := (&vm.Templates{Dir: e.home.Templates()}).Clone(ctx, cfg, agentproto.Setup{})
	check("boot for transport figures", err)
	defer m.Kill()
	defer a.Close()
	run := func(argv ...string) error {
		exit, err := a.Run(ctx, vm.Command{Exec: agentproto.Exec{Argv: argv}})
		if err == nil && exit.Code != 0 {
			err = fmt.Errorf("%v: exit %d", argv, exit.Code)
		}
		return err
	}
	var f transportFigures
	f.roundTrip, err = timeN(max(*runs, 20), func() error { return run("true") })
	check("round trip", err)
	conn, err := net.Dial("unix", filepath.Join(dir, layout.FSSocket))
	check("fs port", err)
	defer conn.Close()
	const size = 64 << 20
	drained := make(chan int64, 1)
	go func() {
		var n int64
		buf := make([]byte, 1<<20)
		for n < size {
			k, err := conn.Read(buf)
			n += int64(k)
			if err != nil {
				break
			}
		}
		drained <- n
	}()
	port := `p=$(grep -l ` + agentproto.FSPortName + ` /sys/class/virtio-ports/*/name); p=/dev/$(basename $(dirname $p)); `
	start := time.Now()
	check("port guest→host", run("sh", "-c", port+fmt.Sprintf("dd if=/dev/zero bs=65536 count=%d 2>/dev/null > $p", size/65536)))
	f.toHostMBs = float64(<-drained) / 1e6 / time.Since(start).Seconds()

	// The writer stops when the connection closes, on return.
	go func() {
		chunk := make([]byte, 1<<20)
		for {
			if _, err := conn.Write(chunk); err != nil {
				return
			}
		}
	}()
	now := `now() { { read _a; read _a; read _a _b _c _d; } </proc/timer_list; echo $((_c / 1000)); }; `
	script := port + now + fmt.Sprintf(`exec 3<$p; head -c 1 <&3 >/dev/null; t0=$(now); dd bs=65536 count=%d iflag=fullblock <&3 >/dev/null 2>&1; t1=$(now); echo $((t1 - t0))`, size/65536)
	var out bytes.Buffer
	exit, err := a.Run(ctx, vm.Command{Exec: agentproto.Exec{Argv: []string{"sh", "-c", script}}, Stdout: &out})
	if err == nil && exit.Code != 0 {
		err = fmt.Errorf("exit %d", exit.Code)
	}
	check("port host→guest", err)
	us, err := strconv.ParseInt(strings.TrimSpace(out.String()), 10, 64)
	if err != nil || us <= 0 {
		fatal(fmt.Errorf("port host→guest: guest printed %q", out.String()))
	}
	f.toGuestMBs = float64(size) / float64(us)
	return f
}
