package netpolicytest

import (
	"io"
	"net/http"
	"slices"
	"testing"
	"time"
)

// Fetch GETs url with c and reads the whole body, failing tb unless the
// answer is a 200 with a body. Call it on the test's goroutine only.
func Fetch(tb testing.TB, c *http.Client, url string) {
	tb.Helper()
	resp, err := c.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	k, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || k == 0 {
		tb.Fatalf("%s: %d, %d bytes, %v", url, resp.StatusCode, k, err)
	}
}

// LatencyP50 is the median time of samples keep-alive requests for url
// (a small one), after one to open the connection.
func LatencyP50(tb testing.TB, c *http.Client, url string, samples int) time.Duration {
	tb.Helper()
	Fetch(tb, c, url)
	ds := make([]time.Duration, 0, samples)
	for range samples {
		t0 := time.Now()
		Fetch(tb, c, url)
		ds = append(ds, time.Since(t0))
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}
