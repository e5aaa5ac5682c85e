import { ApolloDriver, type ApolloDriverConfig } from '@nestjs/apollo';
import {
  ConsoleLogger,
  Controller,
  Injectable,
  UseGuards,
  UseInterceptors,
  type CanActivate,
  type ExecutionContext,
} from '@nestjs/common';
import { APP_GUARD } from '@nestjs/core';
import { Args, GraphQLModule, Query, Resolver } from '@nestjs/graphql';
import { ClientProxyFactory, MessagePattern, Transport, type ClientProxy } from '@nestjs/microservices';
import { SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import type { AddressInfo, Server } from 'node:net';
import { firstValueFrom } from 'rxjs';
import { io, type Socket } from 'socket.io-client';
import request from 'supertest';
import { Metered, MeteringInterceptor, UsageLimitGuard } from '@app/usage-monitoring';
import { CapturingLogger } from './utils/capturing-logger';
import { createTestApp, type TestApp } from './utils/create-test-app';
import { bearer } from './utils/test-controllers';
import { queryUserDb } from './utils/user-db';
import { describeStore } from './utils/test-store';

const NOV_20 = Date.UTC(2026, 10, 20, 8, 0, 0);

/** The host's authentication for every context: the bearer token names the user. */
@Injectable()
class AnyContextAuth implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const type = context.getType<string>();
    const target =
      type === 'graphql'
        ? context.getArgByIndex<{ req: { headers: Record<string, string>; user?: unknown } }>(2).req
        : type === 'ws'
          ? context
              .switchToWs()
              .getClient<{ handshake: { headers: Record<string, string> }; user?: unknown }>()
          : type === 'http'
            ? context.switchToHttp().getRequest<{ headers: Record<string, string>; user?: unknown }>()
            : undefined;
    if (!target) return true;
    const headers = 'handshake' in target ? target.handshake.headers : target.headers;
    const auth = headers.authorization;
    if (auth?.startsWith('Bearer '))
      target.user = { id: Buffer.from(auth.slice(7), 'base64url').toString('utf8') };
    return true;
  }
}

const ASK = 'What is metering?';

@Resolver()
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
class AskResolver {
  @Query('ask')
  @Metered({
    provider: 'openai',
    model: 'gpt-4o-mini',
    usage: (r: { tokens: number }) => ({ inputTokens: 7, outputTokens: r.tokens }),
  })
  ask(@Args('message') message: string) {
    return { reply: `Re: ${message}`, tokens: 3 };
  }

  @Query('free')
  free() {
    return { reply: 'free', tokens: 0 };
  }
}

const ran = { rpc: 0, ws: 0 };

/** Global guards do not run for gateways: the host binds its authentication on the gateway, before ours. */
@WebSocketGateway()
@UseGuards(AnyContextAuth, UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
class AskGateway {
  @SubscribeMessage('ask')
  @Metered({ provider: 'openai', model: 'gpt-4o-mini' })
  ask() {
    ran.ws++;
    // The provider's own answer, as a gateway that proxies it would return it.
    return {
      object: 'chat.completion',
      model: 'gpt-4o-mini',
      choices: [{ index: 0, message: { role: 'assistant', content: 'ws reply' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 11, completion_tokens: 5 },
    };
  }
}

@Controller()
@UseGuards(UsageLimitGuard)
@UseInterceptors(MeteringInterceptor)
class AskRpcController {
  @MessagePattern('ask')
  @Metered({ provider: 'openai' })
  ask() {
    ran.rpc++;
    return { reply: 'rpc' };
  }

  @MessagePattern('ping')
  ping() {
    return 'pong';
  }
}

describeStore('metering in GraphQL resolvers, WebSocket gateways and microservices', () => {
  let t: TestApp;
  let rpc: ClientProxy;
  const logger = new CapturingLogger();
  /** The port the microservice listens on, chosen by the system (a random pick could be a port in use). */
  let rpcPort = 0;

  beforeAll(async () => {
    t = await createTestApp({
      usage: { clock: () => NOV_20 },
      authGuard: false,
      imports: [
        GraphQLModule.forRoot<ApolloDriverConfig>({
          driver: ApolloDriver,
          typeDefs:
            'type Reply { reply: String!, tokens: Int! } type Query { ask(message: String!): Reply, free: Reply }',
        }),
      ],
      controllers: [AskRpcController],
      providers: [{ provide: APP_GUARD, useClass: AnyContextAuth }, AskResolver, AskGateway],
      logger: process.env.DEBUG_CONTEXTS ? new ConsoleLogger() : logger,
      beforeListen: async (app) => {
        const microservice = app.connectMicroservice({
          transport: Transport.TCP,
          options: { host: '127.0.0.1', port: 0 },
        });
        await app.startAllMicroservices();
        rpcPort = (microservice.unwrap<Server>().address() as AddressInfo).port;
      },
    });
    rpc = ClientProxyFactory.create({
      transport: Transport.TCP,
      options: { host: '127.0.0.1', port: rpcPort },
    });
  });
  afterAll(async () => {
    await rpc?.close();
    await t?.close();
  });

  /** A socket.io client of the app's gateway, connected (with these credentials, if any). */
  async function connect(authorization?: string): Promise<Socket> {
    const socket = io(t.url, {
      transports: ['websocket'],
      extraHeaders: authorization ? { authorization } : {},
      forceNew: true,
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('connect_error', reject);
    });
    return socket;
  }

  const graphql = (user: string, query: string) =>
    request(t.url).post('/graphql').set('authorization', bearer(user)).send({ query });

  it('meters a GraphQL resolver, and answers the 429 body as the GraphQL error once over the limit', async () => {
    const user = 'plan=free;graphql';
    for (let i = 0; i < 5; i++) {
      const res = await graphql(user, `{ ask(message: "${ASK}") { reply tokens } }`);
      expect(res.body).toEqual({ data: { ask: { reply: `Re: ${ASK}`, tokens: 3 } } });
    }
    const refused = await graphql(user, `{ ask(message: "${ASK}") { reply } }`);
    expect(refused.body.data).toEqual({ ask: null });
    expect(refused.body.errors).toHaveLength(1);
    expect(refused.body.errors[0].message).toMatch(
      /^Monthly calls limit for ai_text reached \(5 of 5 used\)/,
    );
    expect(refused.body.errors[0].extensions).toMatchObject({
      code: 'USAGE_LIMIT_CALLS',
      provider: 'openai',
      usage_info: expect.objectContaining({ limit: 5, current: 5 }),
    });
    // An unmetered field beside it still answers.
    expect((await graphql(user, '{ free { reply } }')).body).toEqual({ data: { free: { reply: 'free' } } });
    expect(
      await queryUserDb(
        t,
        user,
        'SELECT endpoint, method, input_tokens, output_tokens, outcome FROM usage_events',
      ),
    ).toEqual(
      Array.from({ length: 5 }, () => ({
        endpoint: 'graphql:Query.ask',
        method: 'QUERY',
        input_tokens: 7,
        output_tokens: 3,
        outcome: 'ok',
      })),
    );
  });

  it('meters two metered fields of one GraphQL request separately', async () => {
    const user = 'plan=free;graphql-two';
    const res = await graphql(
      user,
      `
        {
          a: ask(message: "one") {
            tokens
          }
          b: ask(message: "two") {
            tokens
          }
        }
      `,
    );
    expect(res.body).toEqual({ data: { a: { tokens: 3 }, b: { tokens: 3 } } });
    const [n] = await queryUserDb<{ n: number }>(t, user, 'SELECT COUNT(*) AS n FROM usage_events');
    expect(n.n).toBe(2);
  });

  it('meters a WebSocket gateway, and emits the 429 body as its exception event once over the limit', async () => {
    const user = 'plan=free;socket';
    const socket = await connect(bearer(user));
    try {
      for (let i = 0; i < 5; i++) {
        const answer = (await socket.timeout(2000).emitWithAck('ask', { message: ASK })) as {
          usage: unknown;
        };
        expect(answer.usage).toEqual({ prompt_tokens: 11, completion_tokens: 5 });
      }
      const exception = new Promise<unknown>((resolve) => socket.once('exception', resolve));
      socket.emit('ask', { message: ASK });
      expect(await exception).toMatchObject({
        error: 'Usage limit exceeded',
        code: 'USAGE_LIMIT_CALLS',
        provider: 'openai',
        usage_info: expect.objectContaining({ limit: 5, current: 5 }),
      });
    } finally {
      socket.disconnect();
    }
    expect(
      await queryUserDb(
        t,
        user,
        'SELECT endpoint, method, input_tokens, output_tokens, outcome FROM usage_events',
      ),
    ).toEqual(
      Array.from({ length: 5 }, () => ({
        endpoint: 'ws:ask',
        method: 'WS',
        input_tokens: 11,
        output_tokens: 5,
        outcome: 'ok',
      })),
    );
  });

  it('answers a gateway call without a user with a 401 exception event, never running the handler', async () => {
    const socket = await connect();
    try {
      const before = ran.ws;
      const exception = new Promise<unknown>((resolve) => socket.once('exception', resolve));
      socket.emit('ask', { message: ASK });
      expect(await exception).toEqual({ statusCode: 401, message: 'Unauthorized' });
      expect(ran.ws).toBe(before);
    } finally {
      socket.disconnect();
    }
  });

  it('refuses a @Metered microservice handler it cannot meter, naming the handler and the hook', async () => {
    const before = ran.rpc;
    await expect(firstValueFrom(rpc.send('ask', { message: ASK }))).rejects.toMatchObject({
      status: 'error',
      message: 'Internal server error',
    });
    expect(ran.rpc).toBe(before);
    expect(logger.lines.join('\n')).toContain(
      "UsageLimitGuard cannot meter AskRpcController.ask in a 'rpc' context, so this @Metered handler is refused rather than run unmetered. Override getRequestResponse(context)",
    );
    // Unmetered patterns pass.
    expect(await firstValueFrom(rpc.send('ping', {}))).toBe('pong');
  });
});
