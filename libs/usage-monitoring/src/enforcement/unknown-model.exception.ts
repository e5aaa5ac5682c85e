import { HttpException, HttpStatus } from '@nestjs/common';

export const UNKNOWN_MODEL_CODE = 'USAGE_UNKNOWN_MODEL';

/** 400: the request names a model the price book cannot price, and `unknownModels` is `'deny'`. */
export class UnknownModelException extends HttpException {
  constructor(provider: string, model: string) {
    super(
      {
        error: 'Unknown model',
        message: `Model "${model.slice(0, 100)}" has no price, so usage on it cannot be limited; requests naming it are refused.`,
        code: UNKNOWN_MODEL_CODE,
        provider,
      },
      HttpStatus.BAD_REQUEST,
    );
  }
}
