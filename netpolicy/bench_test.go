package netpolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
)

const benchBlob = 16 << 20

// BenchmarkDownload measures an HTTP(S) download from a guest (a second
// gVisor stack over a socketpair, framed as QEMU frames it) through the
// mediation to a local upstream, and the p50 latency of a small request;
// and, in the same run, the same client talking to the upstream directly
// from the host. Metrics: MB/s and p50-ms (mediated), direct-MB/s and
// direct-p50-ms.
//
//	go test -run '^$' -bench Download -benchtime 20x ./netpolicy/
func BenchmarkDownload(b *testing.B) {
	blob := make([]byte, benchBlob)
	for _, scheme := range []string{"http", "https"} {
		b.Run(scheme, func(b *testing.B) {
			up := newUpstream(b, scheme == "https", func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/blob" {
					w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
					w.Write(blob)
					return
				}
				io.WriteString(w, "ok\n")
			})
			n := newTestNetwork(b, localPolicy("api.test"))
			g := newTestGuest(b, n)
			base := scheme + "://api.test:" + up.port()

			upCA, _ := testCAs(b)
			roots := x509.NewCertPool()
			roots.AddCert(upCA.Certificate())
			direct := &http.Client{Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "tcp", up.Listener.Addr().String())
				},
				TLSClientConfig: &tls.Config{RootCAs: roots},
			}}
			mediated := g.Client()

			p50 := netpolicytest.LatencyP50(b, mediated, base+"/small", 200)
			dp50 := netpolicytest.LatencyP50(b, direct, base+"/small", 200)
			netpolicytest.Fetch(b, mediated, base+"/blob") // warm up the connection
			b.SetBytes(benchBlob)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				netpolicytest.Fetch(b, mediated, base+"/blob")
			}
			elapsed := time.Since(start)
			b.StopTimer()
			dstart := time.Now()
			for i := 0; i < b.N; i++ {
				netpolicytest.Fetch(b, direct, base+"/blob")
			}
			delapsed := time.Since(dstart)
			mb := float64(b.N) * benchBlob / 1e6
			b.ReportMetric(mb/elapsed.Seconds(), "MB/s")
			b.ReportMetric(mb/delapsed.Seconds(), "direct-MB/s")
			b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(dp50.Microseconds())/1000, "direct-p50-ms")
		})
	}
}
