package netpolicy

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

const (
	tokenValue = "ghp_realtoken_0123456789"
	tokenPH    = "GONDOLIN_SECRET_0123456789abcdef0123456789abcdef"
	otherPH    = "GONDOLIN_SECRET_fedcba9876543210fedcba9876543210"
	mapsValue  = "maps key/with+escapes"
	mapsPH     = "GONDOLIN_SECRET_00000000000000001111111111111111"
)

func secretPolicy() *Policy {
	return &Policy{
		Allow: []string{"*"},
		Secrets: []Secret{
			{Name: "TOKEN", Hosts: []string{"api.github.com", "*.githubusercontent.com"}, Placeholder: tokenPH, Value: NewSecretValue(tokenValue)},
			{Name: "LOST", Hosts: []string{"lost.example.com"}, Placeholder: otherPH}, // no value: supervisor restarted
			// An API that takes its key in the query only.
			{Name: "MAPS", Hosts: []string{"maps.example.com"}, Placeholder: mapsPH, Value: NewSecretValue(mapsValue), InURL: true},
		},
	}
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func TestApplySecrets(t *testing.T) {
	tests := []struct {
		name        string
		host        string
		url         string
		header      http.Header
		wantBlocked string // secret name, or ""
		wantUsed    string
		wantHeader  map[string]string
		wantURL     string
	}{
		{
			name:       "bearer to allowed host",
			host:       "api.github.com",
			url:        "/user",
			header:     http.Header{"Authorization": {"Bearer " + tokenPH}},
			wantUsed:   "TOKEN",
			wantHeader: map[string]string{"Authorization": "Bearer " + tokenValue},
		},
		{
			name:       "custom header to wildcard host",
			host:       "raw.githubusercontent.com",
			url:        "/x",
			header:     http.Header{"X-Api-Key": {"k=" + tokenPH + ";" + tokenPH}},
			wantUsed:   "TOKEN",
			wantHeader: map[string]string{"X-Api-Key": "k=" + tokenValue + ";" + tokenValue},
		},
		{
			name:       "basic auth password",
			host:       "api.github.com",
			url:        "/",
			header:     http.Header{"Authorization": {basic("x-access-token", tokenPH)}},
			wantUsed:   "TOKEN",
			wantHeader: map[string]string{"Authorization": basic("x-access-token", tokenValue)},
		},
		{
			name:       "basic auth lower-case scheme",
			host:       "api.github.com",
			url:        "/",
			header:     http.Header{"Authorization": {"basic " + base64.StdEncoding.EncodeToString([]byte(tokenPH+":x"))}},
			wantUsed:   "TOKEN",
			wantHeader: map[string]string{"Authorization": "basic " + base64.StdEncoding.EncodeToString([]byte(tokenValue+":x"))},
		},
		{
			// Without the url option a URL is never substituted:
			// servers echo URLs in too many places.
			name:        "query to allowed host without the url option",
			host:        "api.github.com",
			url:         "/search?key=" + tokenPH + "&q=a+b",
			wantBlocked: "TOKEN",
		},
		{
			name:        "path to allowed host without the url option",
			host:        "api.github.com",
			url:         "/keys/" + tokenPH,
			wantBlocked: "TOKEN",
		},
		{
			name:     "query with the url option",
			host:     "maps.example.com",
			url:      "/geocode?key=" + mapsPH + "&q=a+b",
			wantUsed: "MAPS",
			wantURL:  "/geocode?key=" + url.QueryEscape(mapsValue) + "&q=a+b",
		},
		{
			name:     "path with the url option",
			host:     "maps.example.com",
			url:      "/k/" + mapsPH + "/tile",
			wantUsed: "MAPS",
			wantURL:  "/k/" + url.PathEscape(mapsValue) + "/tile",
		},
		{
			name:        "url option: still only to its hosts",
			host:        "evil.example.com",
			url:         "/?key=" + mapsPH,
			wantBlocked: "MAPS",
		},
		{
			name:        "bearer to other host",
			host:        "evil.example.com",
			url:         "/",
			header:      http.Header{"Authorization": {"Bearer " + tokenPH}},
			wantBlocked: "TOKEN",
		},
		{
			name:        "suffix trick",
			host:        "api.github.com.evil.example.com",
			url:         "/",
			header:      http.Header{"Authorization": {"Bearer " + tokenPH}},
			wantBlocked: "TOKEN",
		},
		{
			name:        "basic auth to other host",
			host:        "evil.example.com",
			url:         "/",
			header:      http.Header{"Authorization": {basic(tokenPH, "")}},
			wantBlocked: "TOKEN",
		},
		{
			name:        "placeholder in path to other host",
			host:        "evil.example.com",
			url:         "/steal/" + tokenPH,
			wantBlocked: "TOKEN",
		},
		{
			name:        "percent-encoded placeholder in query",
			host:        "evil.example.com",
			url:         "/?q=%47ONDOLIN" + strings.TrimPrefix(tokenPH, "GONDOLIN"),
			wantBlocked: "TOKEN",
		},
		{
			name:        "real value in header to other host",
			host:        "evil.example.com",
			url:         "/",
			header:      http.Header{"X-Leak": {"v=" + tokenValue}},
			wantBlocked: "TOKEN",
		},
		{
			name:        "real value in basic auth to other host",
			host:        "evil.example.com",
			url:         "/",
			header:      http.Header{"Authorization": {basic("u", tokenValue)}},
			wantBlocked: "TOKEN",
		},
		{
			name:        "real value in URL to other host",
			host:        "evil.example.com",
			url:         "/?t=" + url.QueryEscape(tokenValue),
			wantBlocked: "TOKEN",
		},
		{
			name:        "placeholder without a value",
			host:        "lost.example.com",
			url:         "/",
			header:      http.Header{"Authorization": {"Bearer " + otherPH}},
			wantBlocked: "LOST",
		},
		{
			name:       "nothing secret",
			host:       "evil.example.com",
			url:        "/?q=GONDOLIN_SECRET_",
			header:     http.Header{"Authorization": {"Bearer something-else"}},
			wantHeader: map[string]string{"Authorization": "Bearer something-else"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.ParseRequestURI(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			r := &http.Request{Method: "GET", URL: u, Host: tt.host, Header: tt.header}
			if r.Header == nil {
				r.Header = http.Header{}
			}
			v := secretPolicy().applySecrets(tt.host, r)
			if got := strings.Join(v.blocked, ","); got != tt.wantBlocked {
				t.Fatalf("blocked = %q, want %q (reason %q)", got, tt.wantBlocked, v.reason)
			}
			if tt.wantBlocked != "" {
				if v.reason == "" || strings.Contains(v.reason, tokenValue) {
					t.Errorf("reason = %q", v.reason)
				}
				return
			}
			if tt.wantUsed != "" && strings.Join(v.used, ",") != tt.wantUsed {
				t.Errorf("used = %v, want %s", v.used, tt.wantUsed)
			}
			for k, want := range tt.wantHeader {
				if got := r.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if tt.wantURL != "" && r.URL.RequestURI() != tt.wantURL {
				t.Errorf("URL = %q, want %q", r.URL.RequestURI(), tt.wantURL)
			}
		})
	}
}

func TestRedactAndScrub(t *testing.T) {
	p := secretPolicy()
	// Error messages may quote a URL the host wrote a value into.
	for in, want := range map[string]string{
		"dial https://x/?t=" + tokenValue:                                            "dial https://x/?t=[TOKEN]",
		"GET /k/" + url.PathEscape(mapsValue) + "?key=" + url.QueryEscape(mapsValue): "GET /k/%5BMAPS%5D?key=%5BMAPS%5D",
	} {
		if got := p.redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
	// Responses, from every host, are scrubbed of every value in a
	// policy a request was served under and of the encoded strings
	// substitution wrote, once there is any.
	var h scrubHistory
	if h.scrubber(p, "evil.example.com") != nil || h.scrubber(p, "api.github.com") != nil {
		t.Error("scrubbing before a request was served under a secret value")
	}
	r := &http.Request{URL: &url.URL{Path: "/"}, Header: http.Header{"Authorization": {basic("u", tokenPH)}}}
	v := p.applySecrets("api.github.com", r)
	h.observe(p)
	if err := h.remember(v.encoded); err != nil {
		t.Fatal(err)
	}
	guestCred := strings.TrimPrefix(basic("u", tokenPH), "Basic ")
	hostCred := strings.TrimPrefix(r.Header.Get("Authorization"), "Basic ")
	tests := []struct{ in, want string }{
		{"auth: Bearer " + tokenValue, "auth: Bearer " + tokenPH},
		{"Basic " + hostCred, "Basic " + guestCred},
		{`{"auth":"Basic ` + hostCred + `"}`, `{"auth":"Basic ` + guestCred + `"}`},
		{"/?t=" + url.QueryEscape(tokenValue+"/"), "/?t=" + tokenPH + "%2F"},
		{mapsValue, mapsPH}, // another host's secret: scrubbed too
	}
	for _, host := range []string{"api.github.com", "evil.example.com"} {
		for _, tt := range tests {
			hd := http.Header{"X-Echo": {tt.in}, tt.in: {"in the name"}}
			h.scrubber(p, host)().header(hd)
			if got := hd.Get("X-Echo"); got != tt.want {
				t.Errorf("%s: scrub %q = %q, want %q", host, tt.in, got, tt.want)
			}
			if _, ok := hd[tt.want]; !ok {
				t.Errorf("%s: header name %q not scrubbed: %v", host, tt.in, hd)
			}
		}
	}
	// Removed and rotated values stay scrubbed, the last maxRetired of
	// them: TOKEN's old value and MAPS's, then maxRetired-2 rotations
	// of TOKEN fill the list; one more pushes out the oldest.
	q := p.Clone()
	q.RemoveSecret("MAPS")
	rotated := func(i int) string { return fmt.Sprintf("rotated-%03d-value", i) }
	for i := range maxRetired {
		q.SetSecret(Secret{Name: "TOKEN", Hosts: []string{"api.github.com"}, Value: NewSecretValue(rotated(i))})
		qq := q.Clone()
		h.observe(&qq)
		if i < maxRetired-2 {
			continue
		}
		wants := map[string]string{
			mapsValue:           mapsPH,
			tokenValue:          tokenPH,
			rotated(0):          tokenPH,
			rotated(i):          tokenPH, // current
			"Basic " + hostCred: "Basic " + guestCred,
		}
		if i == maxRetired-1 {
			wants[tokenValue] = tokenValue // the oldest: pushed out
		}
		rep := h.scrubber(&qq, "evil.example.com")()
		for in, want := range wants {
			if got := rep.Replace(in); got != want {
				t.Errorf("after %d rotations: scrub %q = %q, want %q", i+1, in, got, want)
			}
		}
	}
	// Basic credentials: a request that would write one too many is
	// refused rather than one forgotten.
	for i := len(h.encoded); i < maxEncoded; i++ {
		if err := h.remember([]scrubPair{{fmt.Sprint("host", i), fmt.Sprint("guest", i)}}); err != nil {
			t.Fatalf("credential %d: %v", i, err)
		}
	}
	if err := h.remember([]scrubPair{{"one", "more"}}); err == nil {
		t.Error("a credential past maxEncoded was accepted")
	}
	if err := h.remember([]scrubPair{{"host1", "guest1"}}); err != nil {
		t.Errorf("a credential already remembered was refused: %v", err)
	}
	// A short value is scrubbed from its own hosts' responses only.
	pin := &Policy{Secrets: []Secret{{Name: "PIN", Hosts: []string{"a.com"}, Placeholder: tokenPH, Value: NewSecretValue("1234")}}}
	var hp scrubHistory
	hp.observe(pin)
	if sc := hp.scrubber(pin, "b.com"); sc == nil {
		t.Error("responses not scrubbed once a value was seen")
	} else if got := sc().Replace("pin=1234"); got != "pin=1234" {
		t.Errorf("a short value scrubbed from another host's response: %q", got)
	}
	if got := hp.scrubber(pin, "a.com")().Replace("pin=1234"); got != "pin="+tokenPH {
		t.Errorf("short value on its own host: %q", got)
	}
	// Short values are not scanned for (they would match ordinary text).
	short := &Policy{Secrets: []Secret{{Name: "PIN", Hosts: []string{"a.com"}, Placeholder: tokenPH, Value: NewSecretValue("1234")}}}
	r = &http.Request{URL: &url.URL{Path: "/1234"}, Header: http.Header{}}
	if v := short.applySecrets("b.com", r); len(v.blocked) != 0 {
		t.Errorf("short value blocked: %v", v)
	}
	if sc := short.scanBody("b.com"); sc == nil || len(sc.pats) != 1 || string(sc.pats[0]) != tokenPH {
		t.Errorf("body scan for a short value: %+v", sc)
	}
}
