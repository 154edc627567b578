// The pod-start storm's clients through the agent's DNAT hook: one process for every pod, each
// pod's client on its own OS thread that has entered the pod's network namespace (setns), so that
// 250 pods cost 250 threads rather than 250 processes. Standard library only; built by
// bench/storm-dnat.ts with `go build`.
//
// stdin, one command a line:
//
//	prepare <id> <netns file>   a goroutine locks an OS thread, enters the namespace, waits
//	go <id>                     pod <id>'s IP is set: its client starts now
//	end                         no more commands: wait for every started client, then exit
//
// stdout, one JSON object a line: {"ready":true} at start; {"prepared":id[,"error":…]} per
// prepare; per started pod {"i","ipAt","first":{ok,ms,error,accessKeyId},"untilServed","servedAt"}
// (times in ms on this process's monotonic clock; untilServed/servedAt are -1 if never served),
// the same rows as bench/lib/storm-client-main.ts. EOF on stdin before "end" exits at once.
//
// What each client does, as an SDK on a fresh start (and as storm-client-main.ts): a new TCP
// connection to 169.254.169.254:80, PUT /latest/api/token, GET the role listing, GET the
// credentials with the token, all on that connection, the first try with 1 s in all; if it
// fails, retry every 50 ms (5 s a try, a fresh connection each) for up to 60 s to find when the
// pod has credentials.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	imdsAddr     = "169.254.169.254:80"
	firstTimeout = 1000 * time.Millisecond
	retryTimeout = 5000 * time.Millisecond
	retryEvery   = 50 * time.Millisecond
	giveUpAfter  = 60 * time.Second
)

var (
	start = time.Now()
	outMu sync.Mutex
	out   = bufio.NewWriter(os.Stdout)
)

func ms(t time.Time) float64 { return float64(t.Sub(start).Nanoseconds()) / 1e6 }

func emit(v any) {
	b, _ := json.Marshal(v)
	outMu.Lock()
	out.Write(b)
	out.WriteByte('\n')
	out.Flush()
	outMu.Unlock()
}

type result struct {
	OK          bool    `json:"ok"`
	Ms          float64 `json:"ms"`
	Error       string  `json:"error,omitempty"`
	AccessKeyID string  `json:"accessKeyId,omitempty"`
	// ms of each step reached: connect, token PUT, role list GET, credentials GET (the last
	// entry of a failed try is the step that failed)
	Phases []float64 `json:"phases"`
}

type row struct {
	I           int     `json:"i"`
	IPAt        float64 `json:"ipAt"`
	First       result  `json:"first"`
	UntilServed float64 `json:"untilServed"`
	ServedAt    float64 `json:"servedAt"`
	Tries       int     `json:"tries"`
}

type pod struct {
	id    int
	path  string
	goCh  chan struct{}
	ready chan error
}

// enter locks the calling goroutine to its OS thread (for good: the thread dies with the
// goroutine, never returning to the scheduler in the pod's namespace) and moves the thread into
// the network namespace at path, then checks that it is there.
func enter(path string) error {
	runtime.LockOSThread()
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, _, e := syscall.Syscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
		return fmt.Errorf("setns %s: %v", path, e)
	}
	var want, have syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &want); err != nil {
		return err
	}
	if err := syscall.Stat(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()), &have); err != nil {
		return err
	}
	if want.Ino != have.Ino || want.Dev != have.Dev {
		return fmt.Errorf("thread not in %s after setns", path)
	}
	return nil
}

// conn is an SDK's connection to the metadata endpoint: one keep-alive connection, opened anew
// (on this thread, so in this thread's namespace) when the server has closed it.
type conn struct {
	c        net.Conn
	br       *bufio.Reader
	deadline time.Time
}

func (k *conn) close() {
	if k.c != nil {
		k.c.Close()
		k.c = nil
	}
}

func (k *conn) open() error {
	if k.c != nil {
		return nil
	}
	c, err := (&net.Dialer{Deadline: k.deadline}).Dial("tcp4", imdsAddr)
	if err != nil {
		return err
	}
	c.SetDeadline(k.deadline)
	k.c, k.br = c, bufio.NewReader(c)
	return nil
}

func (k *conn) request(method, path string, hdr map[string]string) (int, []byte, error) {
	if err := k.open(); err != nil {
		return 0, nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: keycutter-bench-netns-client\r\nAccept: */*\r\n", method, path)
	for k, v := range hdr {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	if method == "PUT" {
		b.WriteString("Content-Length: 0\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(k.c, b.String()); err != nil {
		k.close()
		return 0, nil, err
	}
	status, body, closing, err := readResponse(k.br)
	if err != nil || closing {
		k.close()
	}
	return status, body, err
}

// readResponse reads one HTTP/1.1 response (Content-Length or chunked body). net/http is not
// used: its Transport dials from other goroutines (other threads, other namespaces), and the
// package triples the cold build time for the one parser needed here.
func readResponse(br *bufio.Reader) (status int, body []byte, closing bool, err error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return 0, nil, false, err
	}
	f := strings.Fields(line)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/1.") {
		return 0, nil, false, fmt.Errorf("bad status line %q", short([]byte(line)))
	}
	status, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, nil, false, fmt.Errorf("bad status line %q", short([]byte(line)))
	}
	length, chunked := -1, false
	for {
		h, err := br.ReadString('\n')
		if err != nil {
			return 0, nil, false, err
		}
		h = strings.TrimRight(h, "\r\n")
		if h == "" {
			break
		}
		k, v, _ := strings.Cut(h, ":")
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.ToLower(strings.TrimSpace(v))
		switch k {
		case "content-length":
			if length, err = strconv.Atoi(v); err != nil || length < 0 || length > 1<<20 {
				return 0, nil, false, fmt.Errorf("bad content-length %q", v)
			}
		case "transfer-encoding":
			chunked = v == "chunked"
		case "connection":
			closing = v == "close"
		}
	}
	switch {
	case chunked:
		for {
			sz, err := br.ReadString('\n')
			if err != nil {
				return 0, nil, false, err
			}
			sz, _, _ = strings.Cut(strings.TrimSpace(sz), ";")
			n, err := strconv.ParseInt(sz, 16, 32)
			if err != nil || n < 0 || len(body)+int(n) > 1<<20 {
				return 0, nil, false, fmt.Errorf("bad chunk size %q", sz)
			}
			chunk := make([]byte, n+2)
			if _, err := io.ReadFull(br, chunk); err != nil {
				return 0, nil, false, err
			}
			if n == 0 {
				break
			}
			body = append(body, chunk[:n]...)
		}
	case length >= 0:
		body = make([]byte, length)
		if _, err := io.ReadFull(br, body); err != nil {
			return 0, nil, false, err
		}
	default:
		return 0, nil, false, errors.New("response without a length")
	}
	return status, body, closing, nil
}

func short(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 100 {
		s = s[:100]
	}
	return s
}

// sdkFetch runs on the pod's locked thread: the socket is created here, in the pod's namespace.
func sdkFetch(timeout time.Duration) (r result) {
	t0 := time.Now()
	last, phases := t0, make([]float64, 0, 4)
	mark := func() {
		now := time.Now()
		phases = append(phases, float64(now.Sub(last).Nanoseconds())/1e6)
		last = now
	}
	defer func() {
		r.Ms = float64(time.Since(t0).Nanoseconds()) / 1e6
		r.Phases = phases
	}()
	fail := func(err error) result {
		msg := err.Error()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			msg = "timeout"
		}
		return result{Error: msg}
	}
	k := &conn{deadline: t0.Add(timeout)}
	defer k.close()
	err := k.open()
	mark()
	if err != nil {
		return fail(err)
	}
	st, tok, err := k.request("PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
	mark()
	if err == nil && st != 200 {
		err = fmt.Errorf("token: HTTP %d %s", st, short(tok))
	}
	if err != nil {
		return fail(err)
	}
	h := map[string]string{"X-aws-ec2-metadata-token": string(tok)}
	st, role, err := k.request("GET", "/latest/meta-data/iam/security-credentials/", h)
	mark()
	if err == nil && st != 200 {
		err = fmt.Errorf("list: HTTP %d %s", st, short(role))
	}
	if err != nil {
		return fail(err)
	}
	name := strings.TrimSpace(string(role))
	if name == "" || strings.ContainsAny(name, "/\n ") {
		return fail(fmt.Errorf("list: bad role name %q", short(role)))
	}
	st, body, err := k.request("GET", "/latest/meta-data/iam/security-credentials/"+name, h)
	mark()
	if err == nil && st != 200 {
		err = fmt.Errorf("creds: HTTP %d %s", st, short(body))
	}
	if err != nil {
		return fail(err)
	}
	var doc struct {
		Code            string
		AccessKeyId     string
		SecretAccessKey string
		Token           string
		Expiration      string
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return fail(fmt.Errorf("creds: not JSON: %v", err))
	}
	if doc.Code != "Success" || doc.AccessKeyId == "" || doc.SecretAccessKey == "" || doc.Token == "" {
		return fail(errors.New("creds: bad document"))
	}
	if exp, err := time.Parse(time.RFC3339, doc.Expiration); err != nil || !exp.After(time.Now()) {
		return fail(fmt.Errorf("creds: bad Expiration %q", doc.Expiration))
	}
	return result{OK: true, AccessKeyID: doc.AccessKeyId}
}

func (p *pod) run(wg *sync.WaitGroup) {
	// never UnlockOSThread: when this goroutine returns, the runtime ends the thread
	err := enter(p.path)
	p.ready <- err
	<-p.goCh
	defer wg.Done()
	ipAt := time.Now()
	if err != nil {
		emit(row{I: p.id, IPAt: ms(ipAt), First: result{Error: "netns: " + err.Error()}, UntilServed: -1, ServedAt: -1})
		return
	}
	first := sdkFetch(firstTimeout)
	r := row{I: p.id, IPAt: ms(ipAt), First: first, UntilServed: -1, ServedAt: -1, Tries: 1}
	if first.OK {
		r.UntilServed = first.Ms
	}
	last := first
	for !last.OK && time.Since(ipAt) < giveUpAfter {
		time.Sleep(retryEvery)
		last = sdkFetch(retryTimeout)
		r.Tries++
		if last.OK {
			r.UntilServed = float64(time.Since(ipAt).Nanoseconds()) / 1e6
		}
	}
	if r.UntilServed >= 0 {
		r.ServedAt = r.IPAt + r.UntilServed
	}
	emit(r)
}

func main() {
	pods := map[int]*pod{}
	var wg sync.WaitGroup
	emit(map[string]any{"ready": true, "now": ms(time.Now())})
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "end":
			wg.Wait()
			os.Exit(0)
		case f[0] == "prepare" && len(f) == 3:
			id, err := strconv.Atoi(f[1])
			if err != nil || pods[id] != nil {
				emit(map[string]any{"prepared": f[1], "error": "bad or duplicate id"})
				continue
			}
			p := &pod{id: id, path: f[2], goCh: make(chan struct{}), ready: make(chan error, 1)}
			pods[id] = p
			go p.run(&wg)
			go func() {
				if err := <-p.ready; err != nil {
					emit(map[string]any{"prepared": id, "error": err.Error()})
				} else {
					emit(map[string]any{"prepared": id})
				}
			}()
		case f[0] == "go" && len(f) == 2:
			id, _ := strconv.Atoi(f[1])
			p := pods[id]
			if p == nil {
				emit(map[string]any{"error": "go: unknown id " + f[1]})
				continue
			}
			wg.Add(1)
			close(p.goCh)
		default:
			emit(map[string]any{"error": "bad command: " + sc.Text()})
		}
	}
	// stdin closed without "end": the bench is gone
	os.Exit(1)
}
