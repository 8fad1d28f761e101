package netpolicy

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/testutil"
)

func TestDialGuest(t *testing.T) {
	n := newTestNetwork(t, DefaultPolicy())
	g := newTestGuest(t, n)
	testutil.Serve(t, g.Listen(8000), func(c net.Conn) {
		io.WriteString(c, c.RemoteAddr().String())
		c.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.DialGuest(ctx, 8000)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	// The guest sees the connection come from the gateway.
	if !strings.HasPrefix(string(b), GatewayIP.String()+":") {
		t.Errorf("guest saw the client at %q", b)
	}
	if _, err := n.DialGuest(ctx, 8001); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("closed port: %v", err)
	}
	if _, err := n.DialGuest(ctx, 0); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("port 0: %v", err)
	}
	n.Close()
	if _, err := n.DialGuest(ctx, 8000); err == nil {
		t.Error("dial on a closed network")
	}
}
