// Command gondolin-agent is the guest side of gondolin. It is the VM's
// init (PID 1): it prepares the system and then serves the host over a
// virtio-serial port for as long as the VM lives.
package main

import (
	"log"
	"os"
	"runtime/debug"

	"github.com/gondolin/gondolin/cptar"
	"github.com/gondolin/gondolin/vm/agent"
	"github.com/gondolin/gondolin/vm/agentproto"
)

func main() {
	// A fatal error in the guest's init (or its fs daemon) is a crash
	// nobody can rerun: print every goroutine, runtime frames included,
	// on the console (stderr), where the host looks for it.
	debug.SetTraceback("system")
	if len(os.Args) == 2 && os.Args[1] == agentproto.CheckArg {
		os.Stdout.WriteString("ok\n")
		return
	}
	if os.Getpid() != 1 {
		if code, ok := cptar.AgentMain(os.Args, os.Stdin, os.Stdout, os.Stderr); ok {
			// gondolin cp runs the agent (/proc/1/exe, there in every
			// image) to pack or unpack its tar stream.
			os.Exit(code)
		}
	}
	if agent.IsFSDaemon(os.Args) {
		// The agent re-executes itself as the one process that serves
		// every FUSE mount (see agent.Guest.Mount for why not in PID 1).
		agent.RunFSDaemon()
		return
	}
	logger := log.New(os.Stderr, "gondolin-agent: ", 0)
	if os.Getpid() == 1 {
		if err := agent.Init(logger); err != nil {
			// Serve anyway: the host's first request reports the trouble
			// better than a kernel panic would.
			logger.Printf("init: %v", err)
		}
	}
	agent.NewServer(logger, agent.Guest{}).Serve(agent.OpenPort(agentproto.PortName))
}
