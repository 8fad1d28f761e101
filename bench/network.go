package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
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
// through the mediation, and with the same curl on the host directly.
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check("listen", err)
	go srv.Serve(ln)
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	const n = 20
	script := func(host string) string {
		return fmt.Sprintf(`curl -s -o /dev/null -w '%%{speed_download}\n' http://%[1]s:%[2]d/big; `+
			`for i in $(seq %[3]d); do curl -s -o /dev/null -w '%%{time_total}\n' http://%[1]s:%[2]d/small; done`, host, port, n)
	}
	guest := func(extra ...string) string {
		args := append([]string{"exec", "--resolve", "dl.test=127.0.0.1", "--allow-internal", "127.0.0.1/32"}, extra...)
		cmd := exec.Command(e.bin, append(args, "--", "sh", "-c", script("dl.test"))...)
		cmd.Env = append(os.Environ(), layout.EnvHome+"="+string(e.home))
		out, err := cmd.Output()
		check("guest curl", err)
		return string(out)
	}
	guestOut := guest()
	// With a secret in the VM every response is scrubbed as it streams.
	scrubbedOut := guest("--host-secret", "BENCH_TOKEN@api.example.com=bench-secret-value-0123456789")
	hostOut, err := exec.Command("sh", "-c", script("127.0.0.1")).Output()
	check("host curl (install curl)", err)

	gMBs, gLat := parseCurl(guestOut)
	sMBs, _ := parseCurl(scrubbedOut)
	hMBs, hLat := parseCurl(string(hostOut))
	return []row{
		{"HTTP download 64 MiB, guest curl", fmt.Sprintf("%.1f MB/s", gMBs), fmt.Sprintf("host curl %.1f MB/s", hMBs), fmt.Sprintf("%.2fx", gMBs/hMBs)},
		{"the same with a secret set (scrubbed)", fmt.Sprintf("%.1f MB/s", sMBs), fmt.Sprintf("no secret %.1f MB/s", gMBs), fmt.Sprintf("%.2fx", sMBs/gMBs)},
		{fmt.Sprintf("HTTP request latency p50 (%d)", n), ms(gLat), "host curl " + ms(hLat), ratio(gLat, hLat)},
	}
}

// parseCurl reads the speed line and the latency lines the script prints.
func parseCurl(out string) (mbs float64, p50 time.Duration) {
	lines := strings.Fields(out)
	if len(lines) < 2 {
		fatal(fmt.Errorf("curl printed %q", out))
	}
	speed, _ := strconv.ParseFloat(lines[0], 64)
	var lat []float64
	for _, l := range lines[1:] {
		v, _ := strconv.ParseFloat(l, 64)
		lat = append(lat, v)
	}
	sort.Float64s(lat)
	return speed / 1e6, time.Duration(lat[len(lat)/2] * 1e9)
}
