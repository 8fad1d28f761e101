package main

// Tests that aim a guest at the host's internal addresses (its loopback,
// the cloud metadata address, LAN addresses, its own public addresses)
// must not send anything to the real ones, even to show that it is
// blocked. They run gondolin inside a network namespace of their own:
// only lo, up, with the addresses the test names added to it, and an
// HTTP server listening on every one of them. A one-shot `gondolin exec`
// runs its VM and the VM's host-side network in the CLI process, so
// every upstream connection the host makes starts, and ends, inside the
// namespace.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
)

// envNetnsChild carries a netnsRun to the test binary re-executed inside
// the namespace (see init).
const envNetnsChild = "GONDOLIN_TEST_NETNS_CHILD"

// netnsRun is what the re-executed test binary does in the namespace.
type netnsRun struct {
	Addrs []string // prefixes added to lo, e.g. 169.254.169.254/32
	Ports []int    // an HTTP server listens on every address on each
	Argv  []string // the command to run (gondolin and its arguments)
	Env   []string
}

// netnsResult is what it reports back.
type netnsResult struct {
	Stdout, Stderr string
	Code           int
	// Hits counts requests by the local address and port they reached
	// (an IPv4 address unmapped), e.g. "169.254.169.254:80".
	Hits map[string]int
	Err  string
}

func (r netnsResult) hits() int {
	n := 0
	for _, v := range r.Hits {
		n += v
	}
	return n
}

// init turns the test binary into the namespace's side of gondolinInNetns
// when envNetnsChild is set: before TestMain, since the binary is then
// not running tests.
func init() {
	spec := os.Getenv(envNetnsChild)
	if spec == "" {
		return
	}
	var run netnsRun
	res := netnsResult{Hits: map[string]int{}}
	if err := json.Unmarshal([]byte(spec), &run); err != nil {
		res.Err = err.Error()
	} else {
		res = run.do()
	}
	json.NewEncoder(os.Stdout).Encode(res)
	os.Exit(0)
}

// do sets the namespace up, serves, runs the command and counts hits.
func (run netnsRun) do() netnsResult {
	res := netnsResult{Hits: map[string]int{}}
	fail := func(format string, a ...any) netnsResult {
		res.Err = fmt.Sprintf(format, a...)
		return res
	}
	// Addresses are only ever added to a namespace that holds nothing
	// but lo: never to the machine's own interfaces.
	ifs, err := net.Interfaces()
	if err != nil {
		return fail("interfaces: %v", err)
	}
	for _, ifc := range ifs {
		if ifc.Name != "lo" {
			return fail("not a fresh network namespace: it has %s", ifc.Name)
		}
	}
	cmds := [][]string{{"link", "set", "lo", "up"}}
	for _, a := range run.Addrs {
		cmds = append(cmds, []string{"addr", "add", a, "dev", "lo"})
	}
	for _, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return fail("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	var mu sync.Mutex
	for _, port := range run.Ports {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			return fail("listen: %v", err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
			key := "?"
			if local != nil {
				if ap, err := netip.ParseAddrPort(local.String()); err == nil {
					key = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
				}
			}
			mu.Lock()
			res.Hits[key]++
			mu.Unlock()
			fmt.Fprintln(w, "reached the host")
		})}
		go srv.Serve(ln)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, run.Argv[0], run.Argv[1:]...)
	cmd.Env = run.Env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	res.Stdout, res.Stderr = out.String(), errb.String()
	if ee, ok := err.(*exec.ExitError); ok {
		res.Code = ee.ExitCode()
	} else if err != nil {
		return fail("run %s: %v", run.Argv[0], err)
	}
	mu.Lock()
	defer mu.Unlock()
	res.Hits = maps.Clone(res.Hits)
	return res
}

// gondolinInNetns runs gondolin with args, as gondolin() does, inside a
// fresh network namespace (unshare -n) where lo is up and holds addrs,
// and an HTTP server answers on every address on each of ports. It
// returns gondolin's result and the server's hits.
func gondolinInNetns(t *testing.T, home layout.Home, addrs []string, ports []int, args ...string) (result, netnsResult) {
	t.Helper()
	if err := exec.Command("unshare", "-n", "true").Run(); err != nil {
		if os.Getenv(testenv.EnvRequireVM) != "" {
			t.Fatalf("cannot create a network namespace (unshare -n needs root or a user namespace): %v", err)
		}
		t.Skipf("cannot create a network namespace: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(netnsRun{
		Addrs: addrs,
		Ports: ports,
		Argv:  append([]string{gondolinBin}, args...),
		Env:   append(os.Environ(), layout.EnvHome+"="+string(home)),
	})
	cmd := exec.Command("unshare", "-n", "--", self)
	cmd.Env = append(os.Environ(), envNetnsChild+"="+string(spec))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("namespace child: %v: %s", err, errb.String())
	}
	var res netnsResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("namespace child said %q (%v), stderr %q", out.String(), err, errb.String())
	}
	if res.Err != "" {
		t.Fatalf("namespace child: %s", res.Err)
	}
	return result{stdout: res.Stdout, stderr: res.Stderr, code: res.Code, elapsed: time.Since(start)}, res
}

// TestNetworkPolicyInternal: the host's loopback, the cloud metadata
// address, a LAN address and the gateway's address are internal without
// --allow-internal, however the guest names them, and nothing reaches a
// server listening on all of them.
func TestNetworkPolicyInternal(t *testing.T) {
	home := testenv.Home(t)
	addrs := []string{"169.254.169.254/32", "192.168.1.1/32", "10.0.2.2/32", "172.16.5.4/32", "100.64.0.1/32"}
	script := `for u in http://internal.test/ http://internal.test:8080/ http://169.254.169.254/latest/meta-data/ ` +
		`http://lan.test/ http://192.168.1.1:8080/ http://172.16.5.4/ http://100.64.0.1/ ; do ` +
		`curl -sS -o /dev/null -w '%{http_code} ' --max-time 20 $u; done; ` +
		// The host dials the Host header's address: every spelling of
		// loopback and metadata, and the gateway's own address.
		`for h in 127.0.0.1 2130706433 0x7f.1 '[::1]' '[::ffff:127.0.0.1]' 0xa9fea9fe 169.254.43518 '[::ffff:a9fe:a9fe]' 10.0.2.2; do ` +
		`curl -sS -o /dev/null -w '%{http_code} ' --max-time 20 -H "Host: $h" http://10.0.2.2/; done`
	r, ns := gondolinInNetns(t, home, addrs, []int{80, 8080},
		"exec", "--resolve", "internal.test=127.0.0.1", "--resolve", "lan.test=192.168.1.1", "--", "sh", "-c", script)
	if want := strings.Repeat("403 ", 16); r.stdout != want || r.code != 0 {
		t.Fatalf("stdout %q, want %q (stderr %q, code %d)", r.stdout, want, r.stderr, r.code)
	}
	if ns.hits() != 0 {
		t.Fatalf("the server in the namespace was reached: %v", ns.Hits)
	}
}

// TestHostileHostAddresses (issue 12, item 11): a service bound to
// 0.0.0.0 or :: on the host answers on every address of the host, public
// ones included. The guest must reach none of them, by address, by a
// name pinned to one, or by a Host header naming one; --allow-internal
// ADDR/32:PORT opens that port of that address and no other.
func TestHostileHostAddresses(t *testing.T) {
	home := testenv.Home(t)
	// Public addresses, which inside the namespace belong to its lo;
	// nothing leaves the namespace, which has no other link.
	const pub4, pub6 = "11.22.33.44", "2a01:4f8:c0c:1234::5"
	addrs := []string{pub4 + "/32", pub6 + "/128"}
	ports := []int{80, 8080}
	curl := `curl -sS -o /dev/null -w '%{http_code} ' --max-time 20 `

	t.Run("blocked", func(t *testing.T) {
		script := curl + `http://` + pub4 + `/; ` + curl + `http://` + pub4 + `:8080/; ` + curl + `http://pub.test/; ` +
			curl + `-H 'Host: [` + pub6 + `]' http://` + pub4 + `/; ` +
			curl + `-H 'Host: [::ffff:` + pub4 + `]:8080' http://` + pub4 + `:8080/; ` +
			// NAT64 of the host's address would reach it through a
			// translator: internal too.
			curl + `-H 'Host: [64:ff9b::b16:212c]' http://` + pub4 + `/`
		r, ns := gondolinInNetns(t, home, addrs, ports, "exec", "--resolve", "pub.test="+pub4, "--", "sh", "-c", script)
		if want := strings.Repeat("403 ", 6); r.stdout != want || r.code != 0 {
			t.Fatalf("stdout %q, want %q (stderr %q, code %d)", r.stdout, want, r.stderr, r.code)
		}
		if ns.hits() != 0 {
			t.Fatalf("the host's own address was reached: %v", ns.Hits)
		}
	})

	t.Run("--allow-internal ADDR/32:PORT opens that port only", func(t *testing.T) {
		script := curl + `http://` + pub4 + `:8080/; ` + curl + `http://` + pub4 + `/; ` +
			curl + `-H 'Host: [` + pub6 + `]:8080' http://` + pub4 + `:8080/`
		r, ns := gondolinInNetns(t, home, addrs, ports,
			"exec", "--allow-internal", pub4+"/32:8080", "--", "sh", "-c", script)
		if want := "200 403 403 "; r.stdout != want || r.code != 0 {
			t.Fatalf("stdout %q, want %q (stderr %q, code %d)", r.stdout, want, r.stderr, r.code)
		}
		if want := map[string]int{pub4 + ":8080": 1}; fmt.Sprint(ns.Hits) != fmt.Sprint(want) {
			t.Fatalf("hits %v, want %v", ns.Hits, want)
		}
	})
}
