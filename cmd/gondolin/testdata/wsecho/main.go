// Command wsecho is a WebSocket echo server the ingress test runs inside a
// guest: gondolin's images have no such tool.
package main

import (
	"io"
	"net/http"
	"os"

	"golang.org/x/net/websocket"
)

func main() {
	http.Handle("/echo", websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) }))
	http.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from the guest, host header "+r.Host+"\n")
	})
	if err := http.ListenAndServe(":"+os.Args[1], nil); err != nil {
		panic(err)
	}
}
