package sessions

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
)

// TestClientBounds: a supervisor that never answers a question (a GET)
// costs the command questionTimeout, not forever, and says so in one
// line; a change (a POST, like a create that builds a template) may take
// longer; an answer larger than maxAnswer is refused.
func TestClientBounds(t *testing.T) {
	defer func(old time.Duration) { questionTimeout = old }(questionTimeout)
	questionTimeout = 200 * time.Millisecond
	mux := http.NewServeMux()
	stuck := make(chan struct{})
	defer close(stuck)
	mux.HandleFunc("GET /v1/sessions", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stuck:
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("POST /v1/sessions/{id}/stop", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(3 * questionTimeout)
		w.Write([]byte(`{"ID":"s1"}`))
	})
	mux.HandleFunc("GET /v1/sessions/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"ID":"`))
		chunk := []byte(strings.Repeat("x", 1<<20))
		for range maxAnswer>>20 + 2 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	defer srv.Close()
	c := NewDialClient(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", l.Addr().String())
	})
	defer c.Close()

	start := time.Now()
	_, err = c.List(context.Background(), true)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "did not answer in 200ms") || time.Since(start) > 10*time.Second {
		t.Errorf("a stuck list: %v after %s", err, time.Since(start))
	}
	if s, err := c.Stop(context.Background(), "s1"); err != nil || s.ID != "s1" {
		t.Errorf("a slow change: %+v, %v", s, err)
	}
	questionTimeout = time.Minute // the bound below is of bytes, not time
	if _, err := c.Get(context.Background(), "big"); err == nil || strings.Contains(err.Error(), "did not answer") {
		t.Errorf("an endless answer: %v, want it refused for its size", err)
	}
}
