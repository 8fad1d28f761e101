package ingress

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
)

// BenchmarkIngress measures HTTP through ingress (host client -> route
// listener -> reverse proxy -> DialGuest -> the VM's gVisor stack -> a
// server on a second stack standing in for the guest, over a socketpair
// framed as QEMU frames it) and, in the same run, two references: the
// same guest server reached over the stack without ingress (an HTTP
// client that dials with DialGuest), which isolates the proxy's cost,
// and the same handler served on host loopback, the raw limit.
//
// Metrics, each for ingress, stack- (no proxy) and host-: MB/s of a
// 16 MiB download, p50-ms of a small keep-alive request, req/s of small
// requests from 8 concurrent clients.
//
//	go test -run '^$' -bench Ingress -benchtime 10x ./ingress/
func BenchmarkIngress(b *testing.B) {
	n := newTestNetwork(b)
	g := newTestGuest(b, n)
	guestServer(b, g, 3000)
	gw := New(n.DialGuest, Options{})
	b.Cleanup(func() { gw.Close() })
	r := mustAdd(b, gw, Route{Listen: "0", GuestPort: 3000})
	mux := http.NewServeMux()
	mux.HandleFunc("/blob", blob)
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	host := httptest.NewServer(mux)
	b.Cleanup(host.Close)

	clients := []struct {
		name string
		base string
		c    *http.Client
	}{
		{"", r.URL(), &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}},
		{"stack-", "http://guest/", &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return n.DialGuest(ctx, 3000) }}}},
		{"host-", host.URL + "/", &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}},
	}
	type result struct {
		mbs, p50, rps float64
	}
	results := make([]result, len(clients))
	for i, cl := range clients {
		netpolicytest.Fetch(b, cl.c, cl.base+"blob") // warm up the connection
		p50 := netpolicytest.LatencyP50(b, cl.c, cl.base+"small", 300)
		rps := parallelRate(b, cl.c, cl.base+"small", 8, 2000)
		if i == 0 {
			b.SetBytes(int64(len(blobData)))
			b.ResetTimer()
		}
		start := time.Now()
		for range b.N {
			netpolicytest.Fetch(b, cl.c, cl.base+"blob")
		}
		elapsed := time.Since(start)
		if i == 0 {
			b.StopTimer()
		}
		results[i] = result{
			mbs: float64(b.N) * float64(len(blobData)) / 1e6 / elapsed.Seconds(),
			p50: float64(p50.Microseconds()) / 1000,
			rps: rps,
		}
	}
	for i, cl := range clients {
		b.ReportMetric(results[i].mbs, cl.name+"MB/s")
		b.ReportMetric(results[i].p50, cl.name+"p50-ms")
		b.ReportMetric(results[i].rps, cl.name+"req/s")
	}
}

// parallelRate is small requests per second from conc clients sharing c.
func parallelRate(b *testing.B, c *http.Client, url string, conc, total int) float64 {
	work := make(chan struct{}, total)
	for range total {
		work <- struct{}{}
	}
	close(work)
	done := make(chan struct{})
	start := time.Now()
	for range conc {
		go func() {
			defer func() { done <- struct{}{} }()
			for range work {
				// (Fatal may not be called off the benchmark's
				// goroutine.)
				resp, err := c.Get(url)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	for range conc {
		<-done
	}
	return float64(total) / time.Since(start).Seconds()
}
