package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// slirpHost is the host's loopback as a guest on QEMU's user-mode
// network sees it.
const slirpHost = "10.0.2.2"

// slirpRun boots the default image as a raw QEMU with gondolin's command
// line, except that the NIC's backend is QEMU's own user-mode network
// (-netdev user, slirp) instead of gondolin's stream socket: the same
// kernel, agent, virtio-net device and guest curl, with QEMU's NAT in
// place of gondolin's stack and proxy. The agent configures eth0 by DHCP,
// which slirp answers (10.0.2.15). It returns what script printed.
func slirpRun(e *env, script string) string {
	dir, err := os.MkdirTemp(string(e.home), "slirp")
	check("slirp run dir", err)
	defer os.RemoveAll(dir)
	cfg := benchConfig(e, dir)
	overlay := filepath.Join(dir, layout.Disk)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", cfg.Backing, overlay).CombinedOutput(); err != nil {
		fatal(fmt.Errorf("slirp: qemu-img: %v: %s", err, out))
	}
	args := vm.CommandLine(cfg)
	swapped := false
	for i, a := range args {
		if i > 0 && args[i-1] == "-netdev" && strings.HasPrefix(a, "stream,id=net0,") {
			args[i] = "user,id=net0"
			swapped = true
		}
	}
	if !swapped {
		fatal(fmt.Errorf("slirp: no -netdev stream,id=net0 in gondolin's QEMU command line %q", args))
	}
	var qemuOut bytes.Buffer
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	check("slirp: start qemu", cmd.Start())
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var a *vm.Agent
	for deadline := time.Now().Add(time.Minute); ; {
		actx, acancel := context.WithTimeout(ctx, 30*time.Second)
		a, err = vm.DialAgent(actx, filepath.Join(dir, layout.AgentSocket))
		acancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			fatal(fmt.Errorf("slirp: agent: %w (qemu: %s; console: %s)", err, qemuOut.String(), vm.ConsoleTail(dir, 2<<10)))
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer a.Close()
	check("slirp: setup", a.Setup(ctx, agentproto.Setup{Hostname: "slirp", UnixNano: time.Now().UnixNano()}))
	check("slirp: network (DHCP from slirp)", a.Network(ctx, agentproto.Network{}))
	var stdout, stderr bytes.Buffer
	exit, err := a.Run(ctx, vm.Command{Exec: agentproto.Exec{Argv: []string{"sh", "-c", script}}, Stdout: &stdout, Stderr: &stderr})
	check("slirp: guest curl", err)
	if exit.Code != 0 {
		fatal(fmt.Errorf("slirp: guest curl: exit %d: %s", exit.Code, stderr.String()))
	}
	return stdout.String()
}
