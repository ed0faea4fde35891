// Test services written with the official Restate Go SDK, run against Capstan by
// tests/e2e/test_polyglot.py: the signup flow.
//
//   - User (virtual object, keyed by user id): create (exclusive; a second create fails with a
//     terminal 409), get (shared; the user or null), setPendingConfirmation and activate (exclusive).
//   - Signup (service): signup creates the user with a request-response call, creates an awakeable,
//     publishes its id on the user with a one-way send (setPendingConfirmation), blocks until the
//     awakeable is resolved (over Capstan's HTTP ingress in the test), activates the user with the
//     resolved confirmation code and returns "welcome <name>".
//
// Usage: bin/sdk-go-services [PORT]   (or PORT in the environment; 0, the default, picks a free port).
// Serves HTTP/1.1 on 127.0.0.1 and advertises REQUEST_RESPONSE on discovery (Capstan drives
// deployments over HTTP/1.1 request-response). Prints "listening on http://127.0.0.1:<port>" once bound.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	restate "github.com/restatedev/sdk-go"
	"github.com/restatedev/sdk-go/server"
)

const userStateKey = "user"

type UserInput struct {
	Name  string `json:"name"`
	Email string `json:"email"`
}

type User struct {
	Name                string `json:"name"`
	Email               string `json:"email"`
	Active              bool   `json:"active"`
	PendingConfirmation string `json:"pendingConfirmation,omitempty"`
	ConfirmationCode    string `json:"confirmationCode,omitempty"`
}

type SignupRequest struct {
	UserId string `json:"userId"`
	Name   string `json:"name"`
	Email  string `json:"email"`
}

func loadUser(ctx restate.ObjectContext) (*User, error) {
	user, err := restate.Get[*User](ctx, userStateKey)
	if err != nil {
		return nil, err
	}
	if user == nil {
		return nil, restate.ToTerminalError(fmt.Errorf("user %s does not exist", restate.Key(ctx)), restate.WithErrorCode(404))
	}
	return user, nil
}

func createUser(ctx restate.ObjectContext, input UserInput) (User, error) {
	existing, err := restate.Get[*User](ctx, userStateKey)
	if err != nil {
		return User{}, err
	}
	if existing != nil {
		return User{}, restate.ToTerminalError(fmt.Errorf("user %s already exists", restate.Key(ctx)), restate.WithErrorCode(409))
	}
	user := User{Name: input.Name, Email: input.Email}
	restate.Set(ctx, userStateKey, user)
	return user, nil
}

func getUser(ctx restate.ObjectSharedContext, _ restate.Void) (*User, error) {
	return restate.Get[*User](ctx, userStateKey)
}

func setPendingConfirmation(ctx restate.ObjectContext, awakeableId string) (restate.Void, error) {
	user, err := loadUser(ctx)
	if err != nil {
		return restate.Void{}, err
	}
	user.PendingConfirmation = awakeableId
	restate.Set(ctx, userStateKey, user)
	return restate.Void{}, nil
}

func activate(ctx restate.ObjectContext, code string) (User, error) {
	user, err := loadUser(ctx)
	if err != nil {
		return User{}, err
	}
	user.Active = true
	user.PendingConfirmation = ""
	user.ConfirmationCode = code
	restate.Set(ctx, userStateKey, user)
	return *user, nil
}

func signup(ctx restate.Context, req SignupRequest) (string, error) {
	if req.UserId == "" {
		return "", restate.ToTerminalError(errors.New("userId is required"), restate.WithErrorCode(400))
	}
	if _, err := restate.Object[User](ctx, "User", req.UserId, "create").Request(UserInput{Name: req.Name, Email: req.Email}); err != nil {
		return "", err
	}
	confirmation := restate.Awakeable[string](ctx)
	restate.ObjectSend(ctx, "User", req.UserId, "setPendingConfirmation").Send(confirmation.Id())
	code, err := confirmation.Result()
	if err != nil {
		return "", err
	}
	if _, err := restate.Object[User](ctx, "User", req.UserId, "activate").Request(code); err != nil {
		return "", err
	}
	return "welcome " + req.Name, nil
}

func main() {
	portArg := os.Getenv("PORT")
	if len(os.Args) > 1 {
		portArg = os.Args[1]
	}
	if portArg == "" {
		portArg = "0"
	}
	port, err := strconv.Atoi(portArg)
	if err != nil || port < 0 || port > 65535 {
		fmt.Fprintf(os.Stderr, "invalid port: %q\n", portArg)
		os.Exit(2)
	}

	user := restate.NewObject("User").
		Handler("create", restate.NewObjectHandler(createUser)).
		Handler("get", restate.NewObjectSharedHandler(getUser)).
		Handler("setPendingConfirmation", restate.NewObjectHandler(setPendingConfirmation)).
		Handler("activate", restate.NewObjectHandler(activate))
	signupService := restate.NewService("Signup").
		Handler("signup", restate.NewServiceHandler(signup))

	handler, err := server.NewRestate().
		Bidirectional(false).
		Bind(user).
		Bind(signupService).
		Handler()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building the handler: %v\n", err)
		os.Exit(1)
	}

	// Our own http.Server rather than server.Restate.Start: Start serves h2c only, Capstan speaks HTTP/1.1.
	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "listen: %v\n", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		slog.Info("shutting down")
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
		_ = srv.Close()
	}()

	fmt.Printf("listening on http://%s\n", listener.Addr().String())
	if err := srv.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "serve: %v\n", err)
		os.Exit(1)
	}
}
