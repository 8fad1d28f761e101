package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// benchConfig is the default image's VM in dir, as gondolin makes it.
func benchConfig(e *env, dir string) vm.Config {
	store, err := imagestore.Open(e.home.Images())
	if err != nil {
		fatal(err)
	}
	img, err := store.Resolve(layout.DefaultImage)
	if err != nil {
		fatal(err)
	}
	// The same machine as an exec VM, NIC included, so that a raw
	// restore of the template gondolin saved can use the same devices.
	return vm.Config{Dir: dir, Kernel: img.KernelPath(), Initramfs: img.InitramfsPath(), Backing: img.RootfsPath(), Accel: vm.TCG, Network: true}
}

// benchFoundation measures boots and execs (issue: foundation).
func benchFoundation(e *env) []row {
	cfg := benchConfig(e, "")

	// First, with nothing else running in this home.
	raw := e.rawBootFigure(cfg)

	// A saved template for the raw restore: the one gondolin makes. The
	// exec also starts the home's supervisor, whose pool fills in the
	// background: it is let finish so that it does not slow what follows.
	check("warm-up exec", gondolinExec(e, "true"))
	waitPoolReady(e)
	gd, err := sessions.NewRuntime(e.home)
	check("runtime", err)
	tmpl := defaultTemplate(gd)
	rawRestore, err := rawN(e, cfg, tmpl.Dir)
	check("raw restore", err)

	cold := e.coldExecFigure()
	// The path of exec without a supervisor (and of gondolin before the
	// warm pool): a clone of the template, restored in the exec's own
	// process. The pool's figures are in their own section.
	warm, err := timeN(*runs, func() error {
		return gondolinExecEnv(e, []string{layout.EnvNoSupervisor + "=1"}, "--", "true")
	})
	check("exec (no supervisor)", err)

	build := templateBuild(tmpl)
	rt, mbs, limitMBs := agentFigures(e, cfg)
	e.roundTrip = rt
	return []row{
		{"raw QEMU boot to agent (the limit)", raw.String(), raw.String(), "1.00x"},
		{"exec -- true, cold boot", cold.String(), "boot " + ms(raw.pct(0.5)), ratio(cold.pct(0.5), raw.pct(0.5))},
		{"exec -- true, template clone (no supervisor)", warm.String(), "boot " + ms(raw.pct(0.5)), ratio(warm.pct(0.5), raw.pct(0.5))},
		{"  raw QEMU restore to agent", rawRestore.String(), "boot " + ms(raw.pct(0.5)), ratio(rawRestore.pct(0.5), raw.pct(0.5))},
		{"exec -- true, template vs raw restore", ms(warm.pct(0.5)), "restore " + ms(rawRestore.pct(0.5)), ratio(warm.pct(0.5), rawRestore.pct(0.5))},
		{"template build (once per image and shape)", ms(build.total), "boot " + ms(raw.pct(0.5)), ratio(build.total, raw.pct(0.5))},
		{"  boot and prepare, then park the agent", ms(build.boot), "boot " + ms(raw.pct(0.5)), ratio(build.boot, raw.pct(0.5))},
		{"  save of the stopped guest", fmt.Sprintf("%s, %.1f MB", ms(build.save), float64(build.bytes)/1e6), "-", "-"},
		{"  check: restore a clone, run a command", ms(build.check), "restore " + ms(rawRestore.pct(0.5)), ratio(build.check, rawRestore.pct(0.5))},
		{"exec round trip in a booted VM", rt.String(), "-", "-"},
		{"stdout through the agent", fmt.Sprintf("%.1f MB/s", mbs), fmt.Sprintf("%.1f MB/s bare port", limitMBs), fmt.Sprintf("%.2fx", mbs/limitMBs)},
	}
}

// rawBootFigure is the raw QEMU boot to the agent, measured once per run.
func (e *env) rawBootFigure(cfg vm.Config) durations {
	if e.rawBoot == nil {
		raw, err := rawN(e, cfg, "")
		check("raw boot", err)
		e.rawBoot = raw
	}
	return e.rawBoot
}

// coldExecFigure is exec --cold -- true, measured once per run.
func (e *env) coldExecFigure() durations {
	if e.coldExec == nil {
		cold, err := timeN(*runs, func() error { return gondolinExec(e, "--cold", "--", "true") })
		check("exec --cold", err)
		e.coldExec = cold
	}
	return e.coldExec
}

// roundTripFigure is the exec round trip in a booted VM, measured once
// per run.
func (e *env) roundTripFigure() durations {
	if e.roundTrip == nil {
		e.roundTrip, _, _ = agentFigures(e, benchConfig(e, ""))
	}
	return e.roundTrip
}

// defaultTemplate is the ready template of the default VM shape (the
// default image, CPUs and memory, with a network) that the warm-up exec
// made or found. It is looked up rather than its key computed: the key
// is the supervisor's to make (it hashes what its configuration holds,
// which the bench's need not).
func defaultTemplate(gd *sessions.Runtime) vm.TemplateInfo {
	list, err := gd.Templates.List()
	check("list templates", err)
	var found *vm.TemplateInfo
	for i, t := range list {
		cpus, mem := t.CPUs, t.MemoryMiB
		if cpus == 0 {
			cpus = vm.DefaultCPUs
		}
		if mem == 0 {
			mem = vm.DefaultMemoryMiB
		}
		if t.State != vm.TemplateReady || !t.Network || cpus != vm.DefaultCPUs || mem != vm.DefaultMemoryMiB {
			continue
		}
		if found == nil || t.Built.After(found.Built) {
			found = &list[i]
		}
	}
	if found == nil {
		var seen []string
		for _, t := range list {
			seen = append(seen, fmt.Sprintf("%s (%s, %d CPU, %d MiB, network %v)", t.Key, t.State, t.CPUs, t.MemoryMiB, t.Network))
		}
		fatal(fmt.Errorf("no ready template of the default shape (%d CPU, %d MiB, network) in %s after the warm-up exec; templates: %v",
			vm.DefaultCPUs, vm.DefaultMemoryMiB, gd.Templates.Dir, seen))
	}
	return *found
}

// buildFigures is how long the template's build took, step by step, as
// its record says.
type buildFigures struct {
	total, boot, save, check time.Duration
	bytes                    int64
}

// templateBuild reads the record of the template the warm-up exec built.
func templateBuild(t vm.TemplateInfo) buildFigures {
	f := buildFigures{boot: time.Duration(t.BootMS) * time.Millisecond, save: time.Duration(t.SaveMS) * time.Millisecond,
		check: time.Duration(t.VerifyMS) * time.Millisecond, bytes: t.StateBytes}
	f.total = f.boot + f.save + f.check
	return f
}

func check(what string, err error) {
	if err != nil {
		fatal(fmt.Errorf("%s: %w", what, err))
	}
}

// gondolinExec runs the real CLI, as a user would.
func gondolinExec(e *env, args ...string) error {
	return gondolinExecEnv(e, nil, args...)
}

// gondolinExecEnv is gondolinExec with variables added to its
// environment.
func gondolinExecEnv(e *env, extraEnv []string, args ...string) error {
	cmd := exec.Command(e.bin, append([]string{"exec"}, args...)...)
	cmd.Env = e.environ(extraEnv...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func rawN(e *env, cfg vm.Config, tmplDir string) (durations, error) {
	var d durations
	for range *runs {
		t, err := rawBoot(e, cfg, tmplDir)
		if err != nil {
			return d, err
		}
		d = append(d, t)
	}
	return d, nil
}

// rawBoot starts QEMU with gondolin's command line but none of its code
// and times from exec to the agent's first answer. With tmplDir it
// restores that template's saved state instead of booting.
func rawBoot(e *env, cfg vm.Config, tmplDir string) (time.Duration, error) {
	dir, err := os.MkdirTemp(string(e.home), "raw")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	cfg.Dir = dir
	backing, format := cfg.Backing, "qcow2"
	if tmplDir != "" {
		backing = filepath.Join(tmplDir, layout.Disk)
		cfg.Restore = filepath.Join(tmplDir, layout.SavedState)
	}
	overlay := filepath.Join(dir, layout.Disk)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", format, "-b", backing, overlay).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu-img: %v: %s", err, out)
	}
	start := time.Now()
	cmd := exec.Command("qemu-system-x86_64", vm.CommandLine(cfg)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if cfg.Restore != "" {
		// A saved state loads stopped: start it as soon as it is loaded.
		if err := rawCont(filepath.Join(dir, layout.QMPSocket)); err != nil {
			return 0, err
		}
	}
	sock := filepath.Join(dir, layout.AgentSocket)
	var conn net.Conn
	for deadline := time.Now().Add(30 * time.Second); ; {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("agent socket: %w", err)
		}
		time.Sleep(time.Millisecond)
	}
	defer conn.Close()
	nonce := agentproto.NewNonce()
	conn.Write(agentproto.Line(agentproto.WordHello, nonce))
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	for {
		word, n, err := agentproto.ScanLine(br)
		if err != nil {
			return 0, fmt.Errorf("agent: %w", err)
		}
		if word == agentproto.WordReady && n == nonce {
			return time.Since(start), nil
		}
	}
}

// rawCont speaks just enough QMP to start a restored VM once QEMU has
// loaded its state.
func rawCont(sock string) error {
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qmp socket: %w", err)
		}
		time.Sleep(time.Millisecond)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	dec := json.NewDecoder(conn)
	// Replies and events share the stream: read up to the next reply.
	call := func(cmd string) (map[string]any, error) {
		if _, err := fmt.Fprintf(conn, `{"execute":%q}`+"\n", cmd); err != nil {
			return nil, err
		}
		for {
			var msg map[string]any
			if err := dec.Decode(&msg); err != nil {
				return nil, fmt.Errorf("qmp %s: %w", cmd, err)
			}
			if e, ok := msg["error"]; ok {
				return nil, fmt.Errorf("qmp %s: %v", cmd, e)
			}
			if r, ok := msg["return"]; ok {
				m, _ := r.(map[string]any)
				return m, nil
			}
		}
	}
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return fmt.Errorf("qmp greeting: %w", err)
	}
	if _, err := call("qmp_capabilities"); err != nil {
		return err
	}
	for {
		st, err := call("query-status")
		if err != nil {
			return err
		}
		if st["status"] != "inmigrate" {
			break
		}
		time.Sleep(time.Millisecond)
	}
	_, err = call("cont")
	return err
}

// agentFigures boots one VM and measures the exec round trip and the
// output throughput through the agent channel.
func agentFigures(e *env, cfg vm.Config) (rt durations, mbs, limitMBs float64) {
	dir, err := os.MkdirTemp(string(e.home), "agent")
	check("agent run dir", err)
	defer os.RemoveAll(dir)
	cfg.Dir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, a, err := (&vm.Templates{Dir: e.home.Templates()}).Clone(ctx, cfg, agentproto.Setup{})
	check("boot for agent figures", err)
	defer m.Kill()
	defer a.Close()
	rt, err = timeN(max(*runs, 50), func() error {
		exit, err := a.Run(ctx, vm.Command{Exec: agentproto.Exec{Argv: []string{"true"}}})
		if err == nil && exit.Code != 0 {
			err = fmt.Errorf("exit %d", exit.Code)
		}
		return err
	})
	check("round trip", err)
	const size = 64 << 20
	produce := fmt.Sprintf("dd if=/dev/zero bs=64k count=%d 2>/dev/null", size/(64<<10))
	var n int64
	start := time.Now()
	_, err = a.Run(ctx, vm.Command{Exec: agentproto.Exec{Argv: []string{"sh", "-c", produce}}, Stdout: countingWriter{&n}})
	check("throughput", err)
	mbs = float64(n) / 1e6 / time.Since(start).Seconds()
	if n != size {
		fatal(fmt.Errorf("throughput: %d bytes of stdout, want %d", n, size))
	}
	// The limit: the same bytes written straight to a virtio-serial port
	// (the unused fs port), drained by a bare socket reader on the host.
	// Timed like the agent's figure, until the host has every byte: the
	// command exits while its last bytes are still queued in the port
	// and in QEMU's socket.
	conn, err := net.Dial("unix", filepath.Join(dir, layout.FSSocket))
	check("fs port", err)
	defer conn.Close()
	all := make(chan struct{})
	go func() {
		buf := make([]byte, 256<<10)
		for got := 0; ; {
			n, err := conn.Read(buf)
			if got += n; got >= size {
				close(all)
				io.Copy(io.Discard, conn)
				return
			}
			if err != nil {
				return
			}
		}
	}()
	port := `p=$(grep -l ` + agentproto.FSPortName + ` /sys/class/virtio-ports/*/name); p=/dev/$(basename $(dirname $p)); `
	start = time.Now()
	_, err = a.Run(ctx, vm.Command{Exec: agentproto.Exec{Argv: []string{"sh", "-c", port + produce + " > $p"}}})
	check("throughput limit", err)
	select {
	case <-all:
	case <-time.After(time.Minute):
		fatal(errors.New("throughput limit: the host did not receive every byte written to the bare port"))
	}
	limitMBs = float64(size) / 1e6 / time.Since(start).Seconds()
	return rt, mbs, limitMBs
}

type countingWriter struct{ n *int64 }

func (c countingWriter) Write(p []byte) (int, error) {
	*c.n += int64(len(p))
	return len(p), nil
}
