import { handlers } from '@/lib/next/auth';
import { authPostRoute } from '@/lib/next/api-routes';

export const runtime = 'nodejs';
export const { GET } = handlers;
export const POST = authPostRoute;
