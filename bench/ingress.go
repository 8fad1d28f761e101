package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/sessions"
)

func init() {
	sections = append(sections, section{"ingress: host to guest HTTP", benchIngress})
}

// benchIngress serves a file from busybox httpd in a VM through an
// ingress route, next to the same file served on the host directly.
func benchIngress(e *env) []row {
	ctx, client, stop := startSupervisor(e, 10*time.Minute)
	defer stop()
	const size = 16 << 20
	s, err := client.Create(ctx, sessions.CreateRequest{Keep: true,
		Listen:  []ingress.Route{{Listen: "127.0.0.1:0", GuestPort: 8000}},
		Command: []string{"sh", "-c", fmt.Sprintf("mkdir -p /tmp/www && head -c %d /dev/zero > /tmp/www/big && echo ok > /tmp/www/small && exec busybox httpd -f -p 8000 -h /tmp/www", size)}})
	check("create", err)
	base := strings.TrimSuffix(s.Ingress[0].URL(), "/")

	blob := bytes.Repeat([]byte{0}, size)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Write(blob)
			return
		}
		io.WriteString(w, "ok\n")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check("listen", err)
	go srv.Serve(ln)
	defer srv.Close()
	direct := "http://" + ln.Addr().String()

	get := func(url string) error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for get(base+"/small") != nil {
		if time.Now().After(deadline) {
			fatal(fmt.Errorf("the guest's httpd never answered through ingress"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	n := max(*runs, 50)
	viaIngress, err := timeN(n, func() error { return get(base + "/small") })
	check("ingress latency", err)
	hostDirect, err := timeN(n, func() error { return get(direct + "/small") })
	check("direct latency", err)
	mbs := func(url string) float64 {
		start := time.Now()
		check("download", get(url))
		return float64(size) / 1e6 / time.Since(start).Seconds()
	}
	ing, dir := mbs(base+"/big"), mbs(direct+"/big")
	// The same guest server reached from inside the guest, no ingress.
	var out bytes.Buffer
	start := time.Now()
	_, err = client.Exec(ctx, s.ID, sessions.ExecRequest{Argv: []string{"sh", "-c", "wget -q -O /dev/null http://127.0.0.1:8000/big"}},
		sessions.ExecStreams{Stdout: &out, Stderr: &out})
	check("in-guest wget: "+out.String(), err)
	inGuest := float64(size) / 1e6 / time.Since(start).Seconds()
	return []row{
		{"HTTP request via ingress", viaIngress.String(), "host " + ms(hostDirect.pct(0.5)), ratio(viaIngress.pct(0.5), hostDirect.pct(0.5))},
		{"16 MiB download via ingress", fmt.Sprintf("%.1f MB/s", ing), fmt.Sprintf("host %.1f MB/s", dir), fmt.Sprintf("%.2fx", ing/dir)},
		{"  same guest server, wget in the guest", fmt.Sprintf("%.1f MB/s", inGuest), "-", fmt.Sprintf("ingress %.2fx", ing/inGuest)},
	}
}
