package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
)

func init() {
	sections = append(sections, section{"network: mediated egress", benchNetwork})
}

// benchNetwork downloads from a local upstream with curl in the guest,
// through the mediation; the limit is the same guest curl in a raw QEMU
// of the same image whose NIC is QEMU's own user-mode network (slirp),
// to the same upstream. The same curl on the host is extra context.
func benchNetwork(e *env) []row {
	const size = 64 << 20
	blob := bytes.Repeat([]byte("gondolin"), size/8)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			w.Write(blob)
			return
		}
		w.Write([]byte("ok\n"))
	})}
	// Loopback only: a slirp guest reaches the host's
	// 127.0.0.1 as 10.0.2.2.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check("listen", err)
	go srv.Serve(ln)
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	const n = 20
	downloads := max(1, min(*runs, 5))
	// The first request learns the address the name resolves to, so
	// that the pinned requests skip the guest's DNS lookup (a slirp
	// guest is given an IP literal and makes none).
	script := func(host string) string {
		url := fmt.Sprintf("http://%s:%d", host, port)
		return fmt.Sprintf(`A=$(curl -s -o /dev/null -w '%%{remote_ip}' %[1]s/small) && `+
			`for i in $(seq %[3]d); do curl -s -o /dev/null -w 'speed %%{speed_download}\n' %[1]s/big; done; `+
			`for i in $(seq %[4]d); do curl -s -o /dev/null -w 'time %%{time_total}\n' %[1]s/small; done; `+
			`for i in $(seq %[4]d); do curl -s -o /dev/null --resolve %[2]s:%[5]d:$A -w 'pinned %%{time_total}\n' %[1]s/small; done`,
			url, host, downloads, n, port)
	}
	guest := func(extra ...string) string {
		// Without a supervisor: the VM (a template clone) and its
		// mediation run in the exec's own process, with the same
		// netpolicy code, and no warm pool refills in the background
		// while the download runs (a claim from the pool starts one,
		// and the slirp limit has no such neighbour on the CPUs).
		args := append([]string{"exec", "--resolve", "dl.test=127.0.0.1", "--allow-internal", "127.0.0.1/32"}, extra...)
		cmd := exec.Command(e.bin, append(args, "--", "sh", "-c", script("dl.test"))...)
		cmd.Env = e.environ(layout.EnvNoSupervisor + "=1")
		out, err := cmd.Output()
		check("guest curl", err)
		return string(out)
	}
	g := parseCurl(guest())
	// With a secret in the VM every response is scrubbed as it streams.
	s := parseCurl(guest("--host-secret", "BENCH_TOKEN@api.example.com=bench-secret-value-0123456789"))
	u := parseCurl(slirpRun(e, script(slirpHost)))
	hostOut, err := exec.Command("sh", "-c", script("127.0.0.1")).Output()
	check("host curl (install curl)", err)
	h := parseCurl(string(hostOut))

	mbs := func(c curlFigures) string { return fmt.Sprintf("%.1f MB/s (median %.1f)", c.best, c.median) }
	user := "-netdev user "
	return []row{
		{fmt.Sprintf("HTTP download 64 MiB, guest curl, best of %d (target >=0.8x)", downloads), mbs(g), user + mbs(u), fmt.Sprintf("%.2fx", g.best/u.best)},
		{"  the same with a secret set (scrubbed)", mbs(s), user + mbs(u), fmt.Sprintf("%.2fx", s.best/u.best)},
		{fmt.Sprintf("HTTP request latency p50 (%d), by name (target <=2x)", n), ms(g.byName), user + ms(u.byName) + " (IP literal)", ratio(g.byName, u.byName)},
		{"  the same, address pinned (no guest DNS lookup)", ms(g.pinned), user + ms(u.pinned), ratio(g.pinned, u.pinned)},
		{"  context: download vs host curl", mbs(g), "host curl " + mbs(h), fmt.Sprintf("%.2fx", g.best/h.best)},
		{"  context: latency p50 by name vs host curl", ms(g.byName), "host curl " + ms(h.byName), ratio(g.byName, h.byName)},
	}
}

// curlFigures is what one run of the script measured.
type curlFigures struct {
	best, median   float64       // download MB/s
	byName, pinned time.Duration // request p50s
}

// parseCurl reads the lines the script prints.
func parseCurl(out string) curlFigures {
	vals := map[string][]float64{}
	for _, line := range strings.Split(out, "\n") {
		kind, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if f, err := strconv.ParseFloat(v, 64); ok && err == nil {
			vals[kind] = append(vals[kind], f)
		}
	}
	for _, k := range []string{"speed", "time", "pinned"} {
		if len(vals[k]) == 0 {
			fatal(fmt.Errorf("curl printed no %s lines: %q", k, out))
		}
		sort.Float64s(vals[k])
	}
	mid := func(v []float64) float64 { return v[len(v)/2] }
	sp := vals["speed"]
	return curlFigures{
		best: sp[len(sp)-1] / 1e6, median: mid(sp) / 1e6,
		byName: time.Duration(mid(vals["time"]) * 1e9), pinned: time.Duration(mid(vals["pinned"]) * 1e9),
	}
}
