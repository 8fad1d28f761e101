package netpolicy

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

const (
	tokenValue = "ghp_realtoken_0123456789"
	tokenPH    = "GONDOLIN_SECRET_0123456789abcdef0123456789abcdef"
	otherPH    = "GONDOLIN_SECRET_fedcba9876543210fedcba9876543210"
)

func secretPolicy() *Policy {
	return &Policy{
		Allow: []string{"*"},
		Secrets: []Secret{
			{Name: "TOKEN", Hosts: []string{"api.github.com", "*.githubusercontent.com"}, Placeholder: tokenPH, Value: NewSecretValue(tokenValue)},
			{Name: "LOST", Hosts: []string{"lost.example.com"}, Placeholder: otherPH}, // no value: supervisor restarted
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
			name:    "query to allowed host",
			host:    "api.github.com",
			url:     "/search?key=" + tokenPH + "&q=a+b",
			wantURL: "/search?key=" + url.QueryEscape(tokenValue) + "&q=a+b",
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
	if got := p.redact("dial https://x/?t=" + tokenValue); strings.Contains(got, tokenValue) || !strings.Contains(got, "[TOKEN]") {
		t.Errorf("redact = %q", got)
	}
	h := http.Header{"X-Echo": {"auth: Bearer " + tokenValue}}
	p.scrubResponse(h)
	if got := h.Get("X-Echo"); got != "auth: Bearer "+tokenPH {
		t.Errorf("scrub = %q", got)
	}
	// Short values are not scanned for (they would match ordinary text).
	short := &Policy{Secrets: []Secret{{Name: "PIN", Hosts: []string{"a.com"}, Placeholder: tokenPH, Value: NewSecretValue("1234")}}}
	r := &http.Request{URL: &url.URL{Path: "/1234"}, Header: http.Header{}}
	if v := short.applySecrets("b.com", r); len(v.blocked) != 0 {
		t.Errorf("short value blocked: %v", v)
	}
}
