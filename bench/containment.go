package main

import (
	"io"
	"time"

	"github.com/gondolin/gondolin/sessions"
)

func init() {
	sections = append(sections, section{"containment: other sessions while one guest attacks", benchContainment})
}

// flood is a hostile guest's terminal output: counted escape sequences
// that an unclamped emulator would run for hundreds of millions of steps
// each, and a console flood, forever.
const flood = `while :; do printf 'A\033[999999999b\033[999999999@\033[999999999L\033[999999999M'; done & ` +
	`while :; do head -c 1048576 /dev/zero | tr '\0' x > /dev/ttyS0; done & wait`

// benchContainment measures what a hostile guest costs everyone else: the
// supervisor's answer to list, and an exec in another session, while one
// session floods its terminal and console, against the same with the
// flooding session idle.
func benchContainment(e *env) []row {
	ctx, client, stop := startSupervisor(e, 10*time.Minute)
	defer stop()

	bystander, err := client.Create(ctx, sessions.CreateRequest{Keep: true})
	check("create", err)
	attacker, err := client.Create(ctx, sessions.CreateRequest{Keep: true})
	check("create", err)

	measure := func() (list, exec durations) {
		list, err := timeN(50, func() error { _, err := client.List(ctx, false); return err })
		check("list", err)
		exec, err = timeN(*runs, func() error {
			_, err := client.Exec(ctx, bystander.ID, sessions.ExecRequest{Argv: []string{"true"}},
				sessions.ExecStreams{Stdout: io.Discard, Stderr: io.Discard})
			return err
		})
		check("exec", err)
		return list, exec
	}
	quietList, quietExec := measure()

	// The flood runs on the attacker's terminal, which the supervisor's
	// emulator reads.
	_, err = client.OpenPTY(ctx, attacker.ID, sessions.OpenPTYRequest{Command: []string{"sh", "-c", flood}, Rows: 24, Cols: 80})
	check("start the flood", err)
	time.Sleep(2 * time.Second)
	attackList, attackExec := measure()
	return []row{
		{"list, one guest flooding", attackList.p50p99(), "quiet " + quietList.p50p99(), ratio(attackList.pct(0.5), quietList.pct(0.5))},
		{"exec in another session, one guest flooding", attackExec.p50p99(), "quiet " + quietExec.p50p99(), ratio(attackExec.pct(0.5), quietExec.pct(0.5))},
	}
}
